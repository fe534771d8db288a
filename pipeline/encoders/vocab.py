"""The word list of the locally built tokenizer (tiny and random-init presets).

Deterministic and offline: special tokens, letters, digits and the words of the generated
sample corpora, so known words map to known ids (tested) rather than to [UNK].
"""

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """
a an the of in on at to and or with is are this that it its one two three four five six seven eight
nine ten photo picture image drawing sound audio video clip moving spinning sliding small big large
red green blue yellow orange purple pink white black gray grey brown cyan magenta
circle square triangle star cross ring diamond shape shapes tone tones beep high low pitch
left right up down fast slow still bright dark background foreground centre center
""".split()
PUNCTUATION = list(".,;:!?'\"-()")
LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789")


def tiny_vocab() -> dict[str, int]:
    """Token → id, stable across runs and machines."""
    tokens: list[str] = []
    for tok in SPECIAL + WORDS + PUNCTUATION + LETTERS + ["##" + c for c in LETTERS]:
        if tok not in tokens:
            tokens.append(tok)
    return {tok: i for i, tok in enumerate(tokens)}
