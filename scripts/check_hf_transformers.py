#!/usr/bin/env python3
"""Checks a bhasa export against Hugging Face transformers and tokenizers.

  1. MambaForCausalLM.from_pretrained(MODEL_DIR) in float32 runs the input_ids of
     INPUT (the file given to `bhasa forward --input`), and its logits are compared
     with bhasa's (the file `bhasa forward --out` wrote): max|d| / max|ref|.
  2. tokenizers.Tokenizer.from_file(MODEL_DIR/tokenizer.json) encodes TEXT to the
     ids `bhasa tokenize` printed (IDS, a JSON array), and decodes them back to TEXT.

Usage:
  check_hf_transformers.py --model DIR --input in.safetensors --logits out.safetensors \
      --text sample.txt --ids ids.json [--device cpu|cuda|both] [--tolerance 1e-4]
Exits 1 when a check fails.
"""
import argparse
import json
import struct
import sys

import torch


def read_safetensors(path):
    """A minimal reader (F32/I64/I32): {name: torch tensor}."""
    dtypes = {"F32": torch.float32, "I64": torch.int64, "I32": torch.int32}
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return out


def check_logits(args, device):
    from transformers import MambaForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False  # full float32, as bhasa computes
    torch.backends.cudnn.allow_tf32 = False
    model = MambaForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device).eval()
    ids = read_safetensors(args.input)["input_ids"].to(torch.long)
    ref = read_safetensors(args.logits)["logits"]
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()
    if logits.shape != ref.shape:
        print(f"logits [{device}]: shape {tuple(logits.shape)} vs bhasa {tuple(ref.shape)}: FAIL")
        return False
    rel = ((logits - ref).abs().max() / ref.abs().max()).item()
    same_argmax = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    ok = rel <= args.tolerance
    print(f"logits [{device}] {tuple(ref.shape)}: max|d|/max|ref| = {rel:.3e}, "
          f"argmax agreement {same_argmax:.4f} -> {'OK' if ok else 'FAIL'} (tolerance {args.tolerance:g})")
    return ok


def check_tokenizer(args):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    with open(args.text, "rb") as f:
        text = f.read().decode("utf-8")
    with open(args.ids) as f:
        bhasa_ids = json.load(f)
    hf_ids = tok.encode(text, add_special_tokens=False).ids
    same = hf_ids == bhasa_ids
    first_diff = next((i for i, (a, b) in enumerate(zip(hf_ids, bhasa_ids)) if a != b), min(len(hf_ids), len(bhasa_ids)))
    back = tok.decode(hf_ids, skip_special_tokens=False)
    print(f"tokenizer: {len(text)} chars -> HF {len(hf_ids)} ids, bhasa {len(bhasa_ids)} ids: "
          f"{'identical' if same else 'DIFFER at index %d' % first_diff}; HF decode round trip "
          f"{'exact' if back == text else 'DIFFERS'}")
    return same and back == text


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--logits", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--ids", required=True)
    p.add_argument("--device", default="both", choices=["cpu", "cuda", "both"])
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args()
    import transformers
    import tokenizers

    print(f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, torch {torch.__version__}")
    devices = ["cpu", "cuda"] if args.device == "both" else [args.device]
    ok = True
    for d in devices:
        if d == "cuda" and not torch.cuda.is_available():
            print("logits [cuda]: no GPU visible, skipped")
            continue
        ok &= check_logits(args, d)
    ok &= check_tokenizer(args)
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
