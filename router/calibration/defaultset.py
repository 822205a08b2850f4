"""The default graded set: generated here, from a seed, so it is licence-clean and reproducible.

``python -m router.calibration.defaultset`` rewrites ``router/calibration/data/default.jsonl``
(a unit test checks the shipped file equals a fresh generation). Every row is machine-checkable
and written from word lists in this file (common knowledge, no third-party data set).

The skills span difficulty so that even 135M–270M models differ: short arithmetic, word
manipulation (reverse, upper case, count letters, first letter), extraction (a number, a name,
an e-mail address from a sentence), clear classifications (sentiment, even/odd, animal or not),
instruction following graded by regular expressions, multiple choice on simple facts, and a few
harder multi-step arithmetic problems.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SEED = 17
OUT = Path(__file__).resolve().parent / "data" / "default.jsonl"
SHORT = 16  # max_tokens of rows whose answer is a word or a number (small models ramble on)

WORDS = ["apple", "river", "stone", "cloud", "bread", "table", "green", "lemon", "tiger", "plant", "house", "chair",
         "music", "paper", "water", "light", "sugar", "horse", "dream", "night", "smile", "ocean", "train", "beach",
         "candle", "garden", "window", "pencil", "rabbit", "silver", "forest", "basket", "winter", "doctor", "flower",
         "bottle", "dog", "cat", "sun", "pen", "cup", "book", "lamp", "frog", "milk", "bird", "kite", "desk"]
NAMES = ["Maria", "Tom", "Aisha", "Lukas", "Sofia", "Kenji", "Omar", "Elena", "David", "Priya", "Jonas", "Chloe",
         "Mateo", "Nora", "Samuel", "Yara"]
ANIMALS = ["horse", "rabbit", "tiger", "dog", "cat", "frog", "eagle", "shark", "cow", "sheep", "lion", "mouse",
           "whale", "snake", "duck", "bear", "goat", "wolf"]
THINGS = ["chair", "spoon", "cloud", "table", "pencil", "bottle", "window", "hammer", "candle", "carpet", "ladder",
          "basket", "bucket", "mirror", "pillow", "teapot", "wallet", "helmet"]
POSITIVE = ["I absolutely loved this {x}; it was wonderful.", "What a fantastic {x}, I am so happy with it!",
            "This {x} is excellent and made my day.", "Brilliant {x}. I would happily buy it again."]
NEGATIVE = ["This {x} was terrible and I hated it.", "What an awful {x}, it broke on the first day.",
            "I am very disappointed; the {x} is useless.", "Horrible {x}. I want my money back."]
PRODUCTS = ["movie", "phone", "book", "restaurant", "hotel", "game", "jacket", "camera", "album"]
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "Egypt": "Cairo", "Canada": "Ottawa", "Russia": "Moscow", "Greece": "Athens", "Kenya": "Nairobi",
            "Peru": "Lima", "Norway": "Oslo"}
FACTS = [("How many legs does a spider have?", "eight", ["six", "four", "ten"]),
         ("How many days are in a week?", "seven", ["five", "six", "ten"]),
         ("What colour is the sky on a clear day?", "blue", ["green", "red", "brown"]),
         ("Which animal says 'moo'?", "cow", ["cat", "dog", "duck"]),
         ("What do bees make?", "honey", ["milk", "silk", "bread"]),
         ("Which planet do we live on?", "Earth", ["Mars", "Venus", "Jupiter"]),
         ("What is frozen water called?", "ice", ["steam", "sand", "glass"]),
         ("How many hours are in a day?", "24", ["12", "60", "100"]),
         ("Which season is the coldest?", "winter", ["summer", "spring", "autumn"]),
         ("What is the opposite of 'up'?", "down", ["left", "over", "near"]),
         ("Which of these is a fruit?", "banana", ["carrot", "potato", "onion"]),
         ("Which shape has three sides?", "triangle", ["square", "circle", "hexagon"])]
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "old": "new", "light": "dark",
             "early": "late", "open": "closed"}
ONE_WORD = ["What colour is grass?", "What animal barks?", "What do you drink when you are thirsty?",
            "What is the capital of France?", "What season comes after spring?", "What colour is snow?",
            "What do you use to write on paper?", "Which fruit is yellow and curved?"]
CATEGORIES = ["fruits", "colours", "animals", "countries", "vegetables", "musical instruments", "sports", "tools"]


def arithmetic(rng: random.Random, i: int) -> tuple:
    op = ("+", "-", "×")[i % 3]
    if op == "+":
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        value = a + b
    elif op == "-":
        a = rng.randint(10, 60)
        b = rng.randint(1, a - 1)
        value = a - b
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        value = a * b
    return f"What is {a} {op} {b}? Answer with just the number.", value, "numeric", None


def multistep_arithmetic(rng: random.Random, i: int) -> tuple:
    a, b, c = rng.randint(3, 19), rng.randint(2, 15), rng.randint(2, 6)
    kind = i % 4
    if kind == 0:
        return f"Compute ({a} + {b}) × {c}. Answer with just the number.", (a + b) * c, "numeric", None, 32
    if kind == 1:
        return f"Compute {a} × {c} − {b}. Answer with just the number.", a * c - b, "numeric", None, 32
    if kind == 2:
        name = rng.choice(NAMES)
        return (f"{name} has {a} apples, buys {b} more and then gives {c} away. How many apples does {name} have now? "
                "Answer with just the number."), a + b - c, "numeric", None, 32
    price = rng.randint(2, 9)
    return (f"A notebook costs {price} dollars. Someone buys {c} notebooks and pays with 50 dollars. "
            "How much change do they get? Answer with just the number."), 50 - price * c, "numeric", None, 32


_POOL = [w for w in WORDS if w != w[::-1]]


def reverse_word(rng: random.Random, i: int) -> tuple:
    w = rng.choice(_POOL)
    return f'Reverse the letters of the word "{w}". Reply with only the reversed word.', w[::-1], "contains", None


def uppercase_word(rng: random.Random, i: int) -> tuple:
    w = rng.choice(_POOL)
    return (f'Write the word "{w}" in capital letters. Reply with only that word.', w.upper(), "contains",
            {"case_sensitive": True})


def count_letters(rng: random.Random, i: int) -> tuple:
    w = rng.choice(_POOL)
    return f'How many letters are in the word "{w}"? Answer with just the number.', len(w), "numeric", None


def first_letter(rng: random.Random, i: int) -> tuple:
    w = rng.choice([w for w in _POOL if w[0] not in "ai"])  # "is a ..." would read as the letter a
    pattern = rf"^\W*{w[0]}(\W|$)|\bis\W+{w[0]}(\W|$)"
    return (f'What is the first letter of the word "{w}"? Reply with only the letter.', w[0], "regex",
            {"pattern": pattern, "ignorecase": True, "mode": "search"})


def extraction(rng: random.Random, i: int) -> tuple:
    name = rng.choice(NAMES)
    if i % 3 == 0:
        kg, price = rng.randint(3, 95), rng.randint(5, 300)
        return (f"The parcel weighs {kg} kilograms and its delivery costs {price} dollars. How many kilograms does "
                "the parcel weigh? Answer with just the number."), kg, "numeric", None
    if i % 3 == 1:
        place = rng.choice(["market", "station", "library", "harbour", "bakery"])
        return f"Yesterday {name} met the teacher at the {place}. Who met the teacher? Reply with the name only.", name, "contains", None
    email = f"{name.lower()}.{rng.choice(['berg', 'rossi', 'kim', 'novak', 'silva'])}@example.org"
    return (f"Please write to {email} before Friday. What is the e-mail address in this sentence? Reply with it only.",
            email, "contains", None, 32)


def sentiment(rng: random.Random, i: int) -> tuple:
    positive = i % 2 == 0
    text = rng.choice(POSITIVE if positive else NEGATIVE).format(x=rng.choice(PRODUCTS))
    ref, other = ("positive", "negative") if positive else ("negative", "positive")
    return (f'Is the sentiment of this review positive or negative? Review: "{text}" Answer with one word.', ref, "contains",
            {"forbid": [other]})


def even_odd(rng: random.Random, i: int) -> tuple:
    k = rng.randint(2, 999)
    ref, other = ("even", "odd") if k % 2 == 0 else ("odd", "even")
    return f"Is {k} even or odd? Answer with one word.", ref, "contains", {"forbid": [other]}


def animal(rng: random.Random, i: int) -> tuple:
    is_animal = i % 2 == 0
    x = rng.choice(ANIMALS if is_animal else THINGS)
    ref, other = ("yes", "no") if is_animal else ("no", "yes")
    return f'Is a "{x}" an animal? Answer yes or no.', ref, "contains", {"forbid": [other]}


def instruction_following(rng: random.Random, i: int) -> tuple:
    kind = i % 6
    if kind == 0:
        return f"Answer with exactly one word: {rng.choice(ONE_WORD)}", r"\W*[A-Za-z]+\W*", "regex", None
    if kind == 1:
        w = rng.choice(WORDS)
        return (f'Write the word "{w}" three times, separated by commas, and nothing else.',
                rf"\W*{w}\s*,\s*{w}\s*,\s*{w}\W*", "regex", {"ignorecase": True})
    if kind == 2:
        k = rng.randint(10, 99)
        return f"Reply with the number {k} written in digits and nothing else.", rf"\W*{k}\W*", "regex", None
    if kind == 3:
        word, opposite = rng.choice(sorted(OPPOSITES.items()))
        return (f"Answer in the form 'Answer: <word>'. What is the opposite of '{word}'?", rf"^\W*Answer:\s*\W?{opposite}\b",
                "regex", {"ignorecase": True, "mode": "search"})
    if kind == 4:
        w = rng.choice(WORDS)
        return f'Reply with only the word "{w.upper()}" written in lowercase letters.', rf"\W*{w}\W*", "regex", None
    return (f"List three {rng.choice(CATEGORIES)}, separated by commas, and nothing else.", r"[^,\n]+,[^,\n]+,[^,\n]+",
            "regex", None, 32)


_QUESTIONS = ([(f"What is the capital of {c}?", cap, [v for k, v in CAPITALS.items() if k != c]) for c, cap in CAPITALS.items()]
              + FACTS)


def multiple_choice(rng: random.Random, i: int) -> tuple:
    q, answer, wrong = _QUESTIONS[i % len(_QUESTIONS)]
    options = [answer, *rng.sample(wrong, 3)]
    rng.shuffle(options)
    letters = dict(zip("ABCD", options))
    ref = next(k for k, v in letters.items() if v == answer)
    lines = "\n".join(f"{k}) {v}" for k, v in letters.items())
    return f"{q}\n{lines}\nAnswer with the letter of the correct option.", ref, "multiple_choice", {"options": letters}


# skill → (row maker, rows); makers return (prompt, reference, grader, params[, max_tokens])
SKILLS = {"arithmetic": (arithmetic, 48), "multistep_arithmetic": (multistep_arithmetic, 40), "reverse_word": (reverse_word, 36),
          "uppercase_word": (uppercase_word, 36), "count_letters": (count_letters, 36), "first_letter": (first_letter, 36),
          "extraction": (extraction, 48), "sentiment": (sentiment, 36), "even_odd": (even_odd, 36), "animal": (animal, 30),
          "instruction_following": (instruction_following, 48), "multiple_choice": (multiple_choice, 48)}


def generate(seed: int = SEED) -> list[dict[str, Any]]:
    """Every row of the default set, deterministic for a seed. No prompt appears twice (a repeat
    would sit in both train and test): a draw that repeats one is drawn again."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    for skill, (make, n) in SKILLS.items():
        for i in range(n):
            for _ in range(200):
                prompt, reference, grader, params, *rest = make(rng, i)
                if prompt not in seen:
                    break
            else:
                raise RuntimeError(f"{skill}: cannot draw {n} distinct prompts")
            seen.add(prompt)
            row = {"qid": f"{skill}-{i:03d}", "skill": skill, "prompt": prompt, "reference": str(reference), "grader": grader}
            if params:
                row["params"] = params
            max_tokens = rest[0] if rest else SHORT
            if max_tokens:
                row["max_tokens"] = max_tokens
            rows.append(row)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    rows = generate()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render(rows), encoding="utf-8")
    skills: dict[str, int] = {}
    for r in rows:
        skills[r["skill"]] = skills.get(r["skill"], 0) + 1
    print(f"{len(rows)} rows → {OUT}: " + ", ".join(f"{k} {v}" for k, v in skills.items()))


if __name__ == "__main__":
    main()
