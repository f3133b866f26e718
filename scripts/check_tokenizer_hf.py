#!/usr/bin/env python3
"""Cross-check bhasa's tokenizers against Hugging Face tokenizers (pip install tokenizers).

  scripts/check_tokenizer_hf.py --bhasa build/release/bhasa [--corpus FILE] [--vocab-size N]

1. The fixture BPE (tests/data/bpe-shakespeare-512): HF and `bhasa tokenize` give the
   same ids (and decode back to the same text) on tricky strings and corpus lines.
2. A char tokenizer written by `bhasa tokenizer train --type char` loads in HF and
   encodes / decodes identically.
3. A BPE trained by `bhasa tokenizer train` has the same vocab and merges as HF's
   BpeTrainer on the same corpus, and HF's encoding with our file equals ours.
Exits non-zero on the first mismatch.
"""
import argparse, json, os, random, subprocess, sys, tempfile, time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bhasa(args, stdin: bytes) -> bytes:
    r = subprocess.run([ARGS.bhasa] + args, input=stdin, capture_output=True)
    if r.returncode != 0:
        sys.exit(f"bhasa {' '.join(args)} failed: {r.stderr.decode(errors='replace')}")
    return r.stdout


def ours_encode(tok_path, text):
    return json.loads(bhasa(["tokenize", "--tokenizer", tok_path], text.encode()))


def ours_decode(tok_path, ids):
    return bhasa(["tokenize", "--decode", "--tokenizer", tok_path], json.dumps(ids).encode()).decode()


def compare(name, tok_path, texts):
    hf = Tokenizer.from_file(tok_path)
    bad = 0
    for t in texts:
        want = hf.encode(t).ids
        got = ours_encode(tok_path, t)
        if got != want:
            print(f"[{name}] MISMATCH encode {t!r}\n  hf   {want}\n  ours {got}")
            bad += 1
            continue
        want_text = hf.decode(want, skip_special_tokens=False)
        got_text = ours_decode(tok_path, want)
        if got_text != want_text:
            print(f"[{name}] MISMATCH decode {t!r}: hf {want_text!r} ours {got_text!r}")
            bad += 1
    print(f"[{name}] {len(texts) - bad}/{len(texts)} texts identical")
    return bad


def tricky_texts(corpus_lines):
    rnd = random.Random(0)
    texts = ["", " ", "  ", "\n", "\n\n\n", "a", " a", "a ", "\t\t x", "x\u00a0y", "x\u2003y  \u3000z",
             "it's you'll they'RE I'M", "'''s", "123456789 1,000.5", "\u0660\u0661\u0662 \u00bd \u2460",
             "caf\u00e9 na\u0131ve \u00df\u1e9e", "\U0001f642\U0001f680 \u4f60\u597d \u092d\u093e\u0937\u093e",
             "tab\tnew\nline\r\nend   ", "<|endoftext|>", "a<|endoftext|>b<|padding|>", "<|endoftext|  >",
             "x\u0085y\u2028z\u200bw\ufeff", "   leading", "trailing   ", "\u00a0\u00a0 \u00a0"]
    alphabet = "ab \n\t'sAZ09.,!?\u00e9\u4f60\U0001f642\u00a0\u2003-_<|>"
    for _ in range(200):
        texts.append("".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 30))))
    texts += rnd.sample(corpus_lines, min(200, len(corpus_lines)))
    return texts


def main():
    corpus = open(ARGS.corpus, encoding="utf-8").read()
    lines = [l for l in corpus.split("\n") if l]
    failures = 0
    tmp = tempfile.mkdtemp(prefix="bhasa_hf_check_")

    # 1. The fixture BPE.
    fixture = os.path.join(ROOT, "tests/data/bpe-shakespeare-512/tokenizer.json")
    failures += compare("fixture-bpe", fixture, tricky_texts(lines))

    # 2. Char tokenizer.
    char_corpus = os.path.join(tmp, "char_corpus.txt")
    with open(char_corpus, "w", encoding="utf-8") as f:
        f.write(corpus[:200000] + "caf\u00e9 \u4f60\u597d \U0001f642 \t\r\n\u00a0")
    char_tok = os.path.join(tmp, "char_tokenizer.json")
    bhasa(["tokenizer", "train", "--type", "char", "--data", char_corpus, "--out", char_tok], b"")
    char_texts = [l for l in rng_sample(lines, 100)] + ["caf\u00e9 \u4f60\u597d \U0001f642", "\r\n\t \u00a0x", "a"]
    failures += compare("char", char_tok, char_texts)

    # 3. BPE training: ours vs HF's trainer.
    our_tok = os.path.join(tmp, "our_bpe.json")
    t0 = time.time()
    bhasa(["tokenizer", "train", "--data", ARGS.corpus, "--vocab-size", str(ARGS.vocab_size), "--out", our_tok], b"")
    t_ours = time.time() - t0
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=ARGS.vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t0 = time.time()
    # The whole corpus as one sequence: HF's train(files) would pre-tokenize line by
    # line, while bhasa pre-tokenizes the text as a whole, the way it is later encoded.
    hf.train_from_iterator([corpus], trainer)
    t_hf = time.time() - t0
    hf_json = json.loads(hf.to_str())
    ours_json = json.load(open(our_tok, encoding="utf-8"))
    hf_merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in hf_json["model"]["merges"]]
    our_merges = [tuple(m) for m in ours_json["model"]["merges"]]
    print(f"[train] vocab {ARGS.vocab_size}: ours {t_ours:.2f}s, HF {t_hf:.2f}s; "
          f"{len(our_merges)} merges vs HF {len(hf_merges)}")
    if our_merges != hf_merges:
        first = next((i for i, (a, b) in enumerate(zip(our_merges, hf_merges)) if a != b), min(len(our_merges), len(hf_merges)))
        print(f"[train] MISMATCH merges: first difference at {first}: ours {our_merges[first:first+3]} hf {hf_merges[first:first+3]}")
        failures += 1
    elif ours_json["model"]["vocab"] != hf_json["model"]["vocab"]:
        print("[train] MISMATCH vocab")
        failures += 1
    else:
        print("[train] merges and vocab identical to HF BpeTrainer")
    failures += compare("trained-bpe", our_tok, tricky_texts(lines))

    print("OK" if failures == 0 else f"{failures} FAILURES")
    sys.exit(1 if failures else 0)


def rng_sample(xs, n):
    return random.Random(1).sample(xs, min(n, len(xs)))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--bhasa", default=os.path.join(ROOT, "build/release/bhasa"))
    p.add_argument("--corpus", default=os.path.join(ROOT, "../shared/data/tinyshakespeare.txt"))
    p.add_argument("--vocab-size", type=int, default=2000)
    ARGS = p.parse_args()
    main()
