"""What a user reads on stderr (issue 23): our warnings one line each, other libraries' warnings hidden, and a
broken weights file refused in one line before any work (it used to print a checksum warning with its source line,
create the run folder, then fail)."""

from __future__ import annotations

import warnings

import pytest

from featurefield import cli
from featurefield.errors import FeatureFieldError, FeatureFieldWarning, warn
from featurefield.teachers.sam import DECODER_FILE, ENCODER_FILE, check_onnx_file
from featurefield.teachers.weights import find_weight_file


def test_our_warnings_are_one_line_and_other_libraries_warnings_are_hidden(capsys):
    with cli.one_line_warnings("featurefield render"):
        for _ in range(2):  # the same line and words: once
            warn("out.mp4: ffmpeg is not available;\n   writing a GIF instead")
            warnings.warn("TypedStorage is deprecated", UserWarning, stacklevel=1)  # what torch, onnx, timm say
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
    assert capsys.readouterr().err == ("featurefield render: warning: out.mp4: ffmpeg is not available; "
                                       "writing a GIF instead\n")
    with pytest.warns(FeatureFieldWarning):  # outside the CLI: an ordinary Python warning, filters as they were
        warn("from Python")


def _tiny_onnx(path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])), str(path))


def test_a_named_weights_file_other_than_the_published_one_is_one_warning_line(tmp_path, capsys):
    _tiny_onnx(tmp_path / DECODER_FILE)  # a re-export: valid ONNX, another checksum
    with cli.one_line_warnings("featurefield query"):
        assert find_weight_file("sam", DECODER_FILE, tmp_path, check=check_onnx_file) == tmp_path / DECODER_FILE
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("featurefield query: warning: ") and "sha256 differs" in line


@pytest.mark.parametrize("content", [b"x", b"x\n", b"\x08\x07garbage"])
def test_a_broken_named_weights_file_is_one_error_and_no_warning(tmp_path, capsys, content):
    (tmp_path / ENCODER_FILE).write_bytes(content)
    with cli.one_line_warnings("featurefield train"), pytest.raises(FeatureFieldError, match="ONNX"):
        find_weight_file("sam", ENCODER_FILE, tmp_path, check=check_onnx_file)
    assert capsys.readouterr().err == ""


def test_training_with_garbage_sam_weights_is_one_line_before_the_run_folder(tmp_path, capsys):
    weights = tmp_path / "w"
    weights.mkdir()
    for name in (ENCODER_FILE, DECODER_FILE):
        (weights / name).write_text("x")
    code = cli.main(["train", "demo:1", "--scene-option", "size=32", "views=12", "--steps", "2", "--device", "cpu",
                     "--teacher", "sam", "--weights", str(weights), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("featurefield train: error: ") and ENCODER_FILE in err[0]
    assert not (tmp_path / "out").exists()
