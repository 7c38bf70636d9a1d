"""Pack an ONNX model small enough to travel to the GPU machine, and unpack it there.

The benchmark machine receives at most 64 MiB with the repository, so the SAM encoder travels as
its graph plus fp16 initializers (half the size) and is rebuilt as an fp32 ONNX file on arrival.
The fp16 rounding of the weights changes the features by ~1e-3 relative; benchmarks that use the
unpacked model say so.

    python bench/infra/carry_tools.py pack   MODEL.onnx OUT_DIR
    python bench/infra/carry_tools.py unpack OUT_DIR MODEL.onnx
    python bench/infra/carry_tools.py lego   LEGO_DIR OUT_DIR [--train] [--test START:STOP]

``lego`` copies a NeRF-synthetic scene's views as lossless RGBA WebP (the same pixels, ~30% smaller
than PNG): the train views with ``--train``, and test views START..STOP-1 (their frames alone in
``transforms_test.json``; the full list is kept as ``transforms_test_all.json`` so parts carried by
separate calls can be merged on arrival).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def pack(model_path: Path, out_dir: Path) -> None:
    model = onnx.load(str(model_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {}
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size > 16:
            weights[init.name] = arr.astype(np.float16)
            init.ClearField("raw_data")
            init.ClearField("float_data")
            init.dims[:] = [0] * 0 + list(arr.shape)
    onnx.save(model, str(out_dir / "graph.onnx"))
    np.savez(out_dir / "weights_fp16.npz", **{f"w{i}": v for i, v in enumerate(weights.values())},
             names=np.array(list(weights.keys())))


def unpack(packed_dir: Path, model_path: Path) -> None:
    model = onnx.load(str(packed_dir / "graph.onnx"), load_external_data=False)
    data = np.load(packed_dir / "weights_fp16.npz")
    names = list(data["names"])
    arrays = {n: data[f"w{i}"].astype(np.float32) for i, n in enumerate(names)}
    for init in model.graph.initializer:
        if init.name in arrays:
            init.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    model_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_path))


def lego(src: Path, out: Path, train: bool, test: tuple[int, int] | None) -> None:
    import json
    import shutil

    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)

    def convert(split: str, frames: list[dict]) -> None:
        for f in frames:
            name = Path(f["file_path"]).name
            dst = out / split / f"{name}.webp"
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.open(src / split / f"{name}.png").save(dst, "WEBP", lossless=True, quality=100, method=6)

    if train:
        shutil.copy(src / "transforms_train.json", out / "transforms_train.json")
        convert("train", json.loads((src / "transforms_train.json").read_text())["frames"])
    if test is not None:
        meta = json.loads((src / "transforms_test.json").read_text())
        (out / "transforms_test_all.json").write_text(json.dumps(meta))
        part = meta["frames"][test[0]:test[1]]
        convert("test", part)
        (out / "transforms_test.json").write_text(json.dumps({**meta, "frames": part}))


if __name__ == "__main__":
    cmd, a, b = sys.argv[1:4]
    if cmd == "lego":
        rest = sys.argv[4:]
        span = next((tuple(int(x) for x in rest[i + 1].split(":")) for i, r in enumerate(rest) if r == "--test"), None)
        lego(Path(a), Path(b), "--train" in rest, span)
    else:
        (pack if cmd == "pack" else unpack)(Path(a), Path(b))
