"""Pack an ONNX model small enough to travel to the GPU machine, and unpack it there.

The benchmark machine receives at most 64 MiB with the repository, so the SAM encoder travels as
its graph plus fp16 initializers (half the size) and is rebuilt as an fp32 ONNX file on arrival.
The fp16 rounding of the weights changes the features by ~1e-3 relative; benchmarks that use the
unpacked model say so.

    python bench/carry_tools.py pack   MODEL.onnx OUT_DIR
    python bench/carry_tools.py unpack OUT_DIR MODEL.onnx
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


if __name__ == "__main__":
    cmd, a, b = sys.argv[1:4]
    (pack if cmd == "pack" else unpack)(Path(a), Path(b))
