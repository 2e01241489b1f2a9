"""Reference for the C tokenizer's encode (core/tokenizer.c): the published BERT
BasicTokenizer (uncased) + WordpieceTokenizer algorithm, written out with Python's
unicodedata and str.lower(), which is what Hugging Face's BertTokenizer runs. Used by
tests/integration/test_tokenizer_fuzz.py to cross-check random Unicode text.

Special tokens written in the text are not special here (no never_split), as in
../shared/data/tokenizer-vectors.jsonl."""
import unicodedata

MAX_WORD_CHARS = 100
CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]


def load_vocab(path):
    vocab = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab[line.rstrip("\n")] = i
    return vocab


def _is_whitespace(c):
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c):
    return c not in "\t\n\r" and unicodedata.category(c).startswith("C")


def _is_punct(c):
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(cp):
    return any(lo <= cp <= hi for lo, hi in CJK_RANGES)


def basic_tokenize(text):
    text = "".join(" " if _is_whitespace(c) else c for c in text
                   if not (ord(c) in (0, 0xFFFD) or _is_control(c)))
    text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in text)
    text = unicodedata.normalize("NFC", text)
    out = []
    for word in text.split():
        word = word.lower()
        word = "".join(c for c in unicodedata.normalize("NFD", word)
                       if unicodedata.category(c) != "Mn")
        cur = ""
        for c in word:
            if _is_punct(c):
                if cur:
                    out.append(cur)
                out.append(c)
                cur = ""
            else:
                cur += c
        if cur:
            out.append(cur)
    return out


def wordpiece(words, vocab, unk="[UNK]"):
    ids = []
    for w in words:
        if len(w) > MAX_WORD_CHARS:
            ids.append(vocab[unk])
            continue
        start, pieces = 0, []
        while start < len(w):
            end, found = len(w), None
            while start < end:
                sub = w[start:end] if start == 0 else "##" + w[start:end]
                if sub in vocab:
                    found = vocab[sub]
                    break
                end -= 1
            if found is None:
                pieces = [vocab[unk]]
                break
            pieces.append(found)
            start = end
        ids.extend(pieces)
    return ids


def encode(text, vocab):
    return wordpiece(basic_tokenize(text), vocab)
