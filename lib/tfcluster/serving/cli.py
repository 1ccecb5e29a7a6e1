"""`tfcluster predict`: call a served model over gRPC.

  tfcluster predict --server localhost:8500 --model nmt "a man rides a bike ." "two dogs play ."
  tfcluster predict --model pg --observation '[0.01, -0.02, 0.03, 0.04]'
  tfcluster predict --model dqn --observation '[[...], [...]]' --label stable
  tfcluster predict --model dcgan --num_images 16 --seed 0 --out grid.png
  tfcluster predict --model ocr --image number.png
  tfcluster predict --model mymodel --inputs '{"x": [[1, 2]]}' --json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from tfcluster import contract
from tfcluster.errors import UserError, main_guard


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfcluster predict", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    a = p.add_argument
    a("text", nargs="*", help="sentences, for a model with one string input (nmt)")
    a("--server", default="localhost:8500", help="host:port of tfcluster serve or tensorflow_model_server (default: localhost:8500)")
    a("--model", required=True, help=f"model name ({', '.join(contract.MODELS)} or any served model)")
    a("--signature", default=None, help=f"signature (default: {contract.DEFAULT_SIGNATURE})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--version", type=int, default=None, help="model version (default: the latest)")
    g.add_argument("--label", default=None, help="version label, e.g. stable or canary")
    a("--observation", default=None, help="dqn/pg: JSON observation [..] or batch [[..], ..]")
    a("--z", default=None, help="dcgan: JSON latent vectors [[..], ..] (default: --num_images random ones)")
    a("--num_images", type=int, default=16, help="dcgan: images to generate when --z is not given (default: 16)")
    a("--seed", type=int, default=0, help="dcgan: seed of the random latent vectors (default: 0)")
    a("--image", action="append", default=[], metavar="FILE",
      help="image models (ocr): an image file, repeatable; fitted to the signature's [H, W, C], "
           "or sent as encoded bytes to a string input")
    a("--inputs", default=None, help='any model: JSON object {"key": value, ...}')
    a("--out", default=None, help="dcgan: write the image grid here (PNG); other models: write outputs as JSON")
    a("--json", action="store_true", help="print every output as JSON")
    a("--timeout_s", type=float, default=30.0, help="deadline per call in seconds (default: 30)")
    a("--tls", action="store_true", help="use TLS with the system's CA certificates")
    a("--ca_cert", default=None, help="use TLS with this CA certificate (PEM)")
    a("--max_receive_mb", type=int, default=256, help="largest response accepted in MiB (default: 256)")
    return p


def _json_arg(flag: str, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{flag}: not valid JSON ({e.msg} at column {e.colno}): {text!r:.80}") from None


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _jsonable(a: np.ndarray):
    if a.dtype.kind in "OS":
        return np.vectorize(_text, otypes=[object])(a).tolist() if a.size else []
    return a.tolist()


def image_inputs(model: str, spec: dict, files: list[str]) -> dict:
    """--image files for the model's one input: encoded bytes for a string input, else decoded and
    fitted to its [batch, H, W, C]."""
    from tfcluster.images import fit_image

    if len(spec) != 1:
        raise UserError(f"--image: model {model} has inputs {list(spec)}; use --inputs")
    (key, t), = spec.items()
    if t.dtype == "string":
        out = []
        for f in files:
            try:
                with open(f, "rb") as fh:
                    out.append(fh.read())
            except OSError as e:
                raise UserError(f"cannot read image {f}: {e.strerror}") from None
        return {key: np.array(out, dtype=object)}
    shape = t.shape
    if shape is None or len(shape) != 4 or None in shape[1:]:
        raise UserError(f"--image: input {key} of model {model} is not an image batch [batch, H, W, C] of known size")
    _, h, w, c = shape
    return {key: np.stack([fit_image(f, h, w, c) for f in files]).astype(t.dtype)}


def build_inputs(args, client) -> dict:
    if args.inputs is not None:
        value = _json_arg("--inputs", args.inputs)
        if not isinstance(value, dict):
            raise UserError('--inputs must be a JSON object {"key": value}')
        return value
    spec = client._input_spec(args.model, args.signature, args.version, args.label)
    keys = list(spec)
    if args.observation is not None:
        obs = np.asarray(_json_arg("--observation", args.observation), dtype=np.float64)
        key = "observation" if "observation" in spec else (keys[0] if len(keys) == 1 else None)
        if key is None:
            raise UserError(f"--observation: model {args.model} has inputs {keys}; use --inputs")
        t = spec[key]
        rank = len(t.shape) if t.shape is not None else 2
        if obs.ndim == rank - 1:
            obs = obs[None]
        return {key: obs.astype(t.dtype if t.dtype != "string" else np.float32)}
    if args.image:
        return image_inputs(args.model, spec, args.image)
    if args.text:
        strings = [k for k, t in spec.items() if t.dtype == "string"]
        if len(keys) != 1 or not strings:
            raise UserError(f"model {args.model} takes {keys}, not text; use --observation or --inputs")
        return {keys[0]: list(args.text)}
    if "z" in spec or args.z is not None:
        key = "z" if "z" in spec else keys[0]
        if args.z is not None:
            z = np.asarray(_json_arg("--z", args.z), dtype=np.float32)
            return {key: z[None] if z.ndim == 1 else z}
        md = client.metadata(args.model, version=args.version, label=args.label)
        sig = md.signatures.get(args.signature or contract.DEFAULT_SIGNATURE)
        shape = {t.key: t.shape for t in sig.inputs}[key] if sig else None
        if not shape or shape[-1] is None:
            raise UserError(f"model {args.model}: the size of {key} is not in its signature; pass --z")
        rng = np.random.default_rng(args.seed)
        return {key: rng.standard_normal((args.num_images, shape[-1])).astype(np.float32)}
    raise UserError(f"nothing to send to {args.model}: give sentences, --observation, --z or --inputs (inputs: {keys})")


def show(args, out: dict[str, np.ndarray]) -> None:
    images = next((a for a in out.values() if a.dtype == np.uint8 and a.ndim == 4), None)
    if args.out and images is not None:
        from tfcluster.images import image_grid, save_image

        save_image(args.out, image_grid(images))
        n, h, w, c = images.shape
        print(f"wrote {args.out}: {n} images {h}x{w}x{c} in a grid")
        return
    if args.out:
        with open(args.out, "w") as f:
            json.dump({k: _jsonable(v) for k, v in out.items()}, f)
        print(f"wrote {args.out}")
        return
    if args.json:
        print(json.dumps({k: _jsonable(v) for k, v in out.items()}))
        return
    strings = [k for k, v in out.items() if v.dtype.kind in "OS"]
    if len(strings) == 1:  # a text answer (a translation, a digit string): one line per input
        for t in out[strings[0]].reshape(-1):
            print(_text(t))
        return
    for k in sorted(out):
        print(f"{k}: {json.dumps(_jsonable(out[k]))}")


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from tfcluster.serving.client import Client

    tls = args.ca_cert or args.tls
    with Client(args.server, timeout_s=args.timeout_s, tls=tls, max_receive_mb=args.max_receive_mb) as client:
        inputs = build_inputs(args, client)
        out = client.predict(args.model, inputs, signature=args.signature, version=args.version, label=args.label)
    show(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
