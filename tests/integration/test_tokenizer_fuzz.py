#!/usr/bin/env python3
"""`cdcd tokenize` against the Python reference of the BERT algorithm
(tests/reference/bert_tokenizer_ref.py) on random text mixing the hard cases: controls,
Unicode spaces, accents and combining marks, Greek capital sigma (final form), CJK,
fullwidth forms, punctuation of every kind, emoji, characters with canonical
decompositions, over-long words, and random assigned code points.

Characters that Python's Unicode database does not know are avoided: where Python and
libutf8proc are on different Unicode versions they could be dropped by one (as Cn) and
kept by the other. Output: PASS/FAIL lines; exit status 1 on any failure."""
import json
import os
import random
import subprocess
import sys
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import bert_tokenizer_ref as ref  # noqa: E402

SHARED = os.environ.get("CDCD_SHARED_DATA") or os.path.join(ROOT, "..", "shared", "data")
BIN = os.environ.get("CDCD_BIN") or os.path.join(ROOT, "bin")
N_TEXTS = 4000
SEED = 20240611
POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    " \t\n\r\x0b\x0c\x01\x1f\x7f\x85\xa0",
    "àéîõüÀÉÎÕÜñçßøåæœÿıİĳ",
    "ΣΑΒΓΔσςΟΔΟΣ.ΌΣΟΣ'Σ",
    "\u0300\u0301\u0302\u0308\u0327\u0345\u05b0\u093c\u0e31\u20dd",
    "中文字符测试日本語のテキスト한국어\uf900\uf901\u3400\U00020000",
    "ＦｕｌｌｗｉｄｔｈＡＢＣ～！",
    "\u2000\u2003\u3000\u2028\u2029\u200b\u200d\ufeff\u00ad\ufffd\ue000",
    "😀🎉👍🏽❤️✨",
    "\u0958\u0959क़ख़ग़",
    "–—‘’“”…•·¿¡«»‹›",
    "ʰʲˀˁᴬᵃⅰⅱⅠⅡⓐⒶªº",
    "ǅǈǋǲᾈᾼῌ",
]


def random_char(rng):
    if rng.random() < 0.08:
        while True:
            c = chr(rng.randrange(0x80, 0x30000))
            if unicodedata.category(c) not in ("Cn", "Cs"):
                return c
    return rng.choice(rng.choice(POOLS))


def main():
    rng = random.Random(SEED)
    vocab = ref.load_vocab(os.path.join(SHARED, "bert-base-uncased-vocab.txt"))
    texts = []
    for _ in range(N_TEXTS):
        s = "".join(random_char(rng) for _ in range(rng.randrange(0, 60)))
        if rng.random() < 0.1:
            s = "x" * rng.randrange(90, 110) + s
        texts.append(s)
    cdcd = os.path.join(BIN, "cdcd")
    if not os.access(cdcd, os.X_OK):
        print(f"FAIL tokenizer_fuzz: {cdcd} is missing (make first)")
        return 1
    inp = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    r = subprocess.run([cdcd, "tokenize", "--vocab", os.path.join(SHARED, "bert-base-uncased-vocab.txt")],
                       input=inp.encode(), capture_output=True)
    if r.returncode != 0:
        print(f"FAIL tokenizer_fuzz: cdcd tokenize exited {r.returncode}: {r.stderr.decode()[-300:]}")
        return 1
    got = [json.loads(line)["ids"] for line in r.stdout.decode().splitlines()]
    bad = [(t, g) for t, g in zip(texts, got) if ref.encode(t, vocab) != g]
    if len(got) != len(texts) or bad:
        detail = f"{len(bad)} of {len(texts)} differ" if bad else f"{len(got)} lines for {len(texts)}"
        if bad:
            detail += f"; first: {json.dumps(bad[0][0])}"
        print(f"FAIL tokenizer_fuzz: {detail}")
        return 1
    print(f"PASS tokenizer_fuzz {len(texts)} random texts match the Python reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
