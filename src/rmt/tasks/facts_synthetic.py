"""`facts-synthetic`: invented people with random attributes, stated in prose and asked about in questions.

Because the entities are invented, a model can only answer by recalling what it read during training: the task
isolates memorisation and recall from world knowledge. The split machinery is shared with `facts-real`
(see `rmt.tasks.factqa`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rmt.tasks.base import Example, Task, seeded_rng
from rmt.tasks.factqa import HOLDOUTS, Fact, Relation, build_fact_splits

# --- Names: two parts, each two consonant-vowel syllables and an optional closing consonant ("Vorla Minet"). ---
SYLLABLES: tuple[str, ...] = (
    "ba", "be", "bo", "da", "de", "di", "do", "fa", "fe", "fi", "ga", "go", "ka", "ke", "ki", "ko", "la", "le",
    "li", "lo", "lu", "ma", "me", "mi", "mo", "na", "ne", "ni", "no", "pa", "ra", "re", "ri", "ro", "sa", "se",
    "si", "so", "ta", "te", "ti", "to", "va", "ve", "vi", "vo", "za", "zo",
)
CODAS: tuple[str, ...] = ("", "", "n", "r", "l", "s", "t", "m")

# --- Attributes, in the order `attributes=N` takes them: values, then statement and question templates. ---
CITIES: tuple[str, ...] = (
    "Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo",
    "Stockholm", "Helsinki", "Copenhagen", "Warsaw", "Budapest", "Athens", "Cairo", "Nairobi", "Lagos", "Accra",
    "Dakar", "Tunis", "Casablanca", "Mumbai", "Delhi", "Chennai", "Dhaka", "Karachi", "Lahore", "Tehran",
    "Istanbul", "Ankara", "Moscow", "Kyiv", "Minsk", "Riga", "Vilnius", "Tallinn", "Beijing", "Shanghai", "Seoul",
    "Osaka", "Kyoto", "Manila", "Jakarta", "Bangkok", "Hanoi", "Sydney", "Melbourne", "Perth", "Auckland",
    "Toronto", "Montreal", "Vancouver", "Chicago", "Boston", "Seattle", "Denver", "Houston", "Miami", "Lima",
    "Bogota", "Quito", "Santiago", "Havana",
)
JOBS: tuple[str, ...] = (
    "baker", "doctor", "teacher", "farmer", "pilot", "lawyer", "nurse", "painter", "plumber", "carpenter", "chef",
    "dentist", "engineer", "architect", "banker", "butcher", "tailor", "florist", "librarian", "journalist",
    "pharmacist", "surgeon", "sailor", "soldier", "poet", "writer", "actor", "singer", "dancer", "designer",
    "editor", "economist", "electrician", "mechanic", "miner", "fisherman", "gardener", "jeweller", "judge",
    "potter", "translator", "vet", "waiter", "welder", "chemist", "physicist", "astronomer", "geologist",
    "biologist", "historian", "sculptor", "photographer", "programmer", "accountant", "barber", "cashier",
)
PETS: tuple[str, ...] = (
    "cat", "dog", "rabbit", "hamster", "parrot", "goldfish", "turtle", "snake", "lizard", "ferret", "mouse", "rat",
    "pony", "horse", "goat", "pig", "chicken", "duck", "goose", "owl", "hawk", "frog", "toad", "newt", "gecko",
    "iguana", "canary", "finch", "budgie", "tortoise", "hedgehog", "chinchilla", "gerbil", "alpaca", "llama",
    "donkey", "sheep", "cow", "crab", "spider", "scorpion", "beetle", "snail", "eel", "koi", "axolotl",
    "salamander", "raccoon", "fox", "squirrel", "chipmunk", "otter", "skunk", "peacock", "pigeon", "crow", "raven",
)
FOODS: tuple[str, ...] = (
    "pizza", "pasta", "sushi", "ramen", "curry", "tacos", "burritos", "paella", "risotto", "lasagna", "dumplings",
    "pancakes", "waffles", "omelettes", "soup", "salad", "steak", "chili", "noodles", "falafel", "hummus", "kebab",
    "bagels", "croissants", "porridge", "couscous", "gnocchi", "ravioli", "nachos", "burgers", "sandwiches", "pies",
    "stew", "goulash", "borscht", "pierogi", "tempura", "gyoza", "kimchi", "bibimbap", "pho", "laksa", "satay",
    "biryani", "samosas", "tofu", "cheese", "chocolate", "cake", "cookies", "muffins", "donuts", "pretzels",
    "popcorn", "olives", "mangoes", "grapes", "cherries", "plums",
)
INSTRUMENTS: tuple[str, ...] = (
    "piano", "violin", "cello", "guitar", "flute", "clarinet", "oboe", "bassoon", "trumpet", "trombone", "tuba",
    "harp", "drums", "banjo", "mandolin", "ukulele", "accordion", "harmonica", "saxophone", "bagpipes", "sitar",
    "lute", "viola", "organ", "xylophone", "marimba", "tambourine", "triangle", "bongos", "cymbals", "piccolo",
    "recorder", "horn", "bugle", "cornet", "zither", "dulcimer", "harpsichord", "synthesizer", "keyboard", "kazoo",
    "didgeridoo", "balalaika", "bouzouki", "koto", "shamisen", "erhu", "guzheng", "oud", "tabla", "djembe",
    "castanets", "glockenspiel", "vibraphone", "theremin", "ocarina", "melodica", "fiddle",
)
SPORTS: tuple[str, ...] = (
    "football", "tennis", "golf", "hockey", "rugby", "cricket", "baseball", "basketball", "volleyball", "handball",
    "badminton", "squash", "boxing", "judo", "karate", "taekwondo", "wrestling", "fencing", "archery", "rowing",
    "sailing", "surfing", "skiing", "snowboarding", "skating", "cycling", "running", "swimming", "diving",
    "climbing", "bowling", "darts", "snooker", "polo", "lacrosse", "softball", "netball", "curling", "biathlon",
    "triathlon", "gymnastics", "weightlifting", "kayaking", "canoeing", "hiking", "orienteering", "skateboarding",
    "windsurfing", "kitesurfing", "croquet", "billiards", "frisbee", "dodgeball", "kickboxing", "bobsleigh", "luge",
)

ATTRIBUTES: dict[str, tuple[tuple[str, ...], Relation]] = {
    "city": (CITIES, Relation(
        "city",
        statements=("{e} lives in {v}.", "The home of {e} is in {v}.", "{e} has a house in {v}."),
        questions=("Q: Where does {e} live? A:", "Q: In which city is the home of {e}? A:",
                   "Q: What city does {e} call home? A:"),
    )),
    "job": (JOBS, Relation(
        "job",
        statements=("{e} works as {a} {v}.", "By profession, {e} is {a} {v}.", "The job of {e} is that of {a} {v}."),
        questions=("Q: What is the job of {e}? A:", "Q: What does {e} do for a living? A:",
                   "Q: What is the profession of {e}? A:"),
    )),
    "pet": (PETS, Relation(
        "pet",
        statements=("{e} has a pet {v}.", "The pet of {e} is {a} {v}.", "At home, {e} keeps {a} {v}."),
        questions=("Q: What pet does {e} have? A:", "Q: Which animal is the pet of {e}? A:",
                   "Q: What animal does {e} keep at home? A:"),
    )),
    "food": (FOODS, Relation(
        "food",
        statements=("The favourite food of {e} is {v}.", "{e} loves to eat {v}.", "Above all, {e} likes eating {v}."),
        questions=("Q: What is the favourite food of {e}? A:", "Q: What does {e} love to eat? A:",
                   "Q: Which food does {e} like best? A:"),
    )),
    "instrument": (INSTRUMENTS, Relation(
        "instrument",
        statements=("{e} plays the {v}.", "The instrument of {e} is the {v}.", "In the band, {e} plays the {v}."),
        questions=("Q: What instrument does {e} play? A:", "Q: Which instrument is played by {e}? A:",
                   "Q: In the band, what does {e} play? A:"),
    )),
    "sport": (SPORTS, Relation(
        "sport",
        statements=("The sport of {e} is {v}.", "Every weekend, {e} practises {v}.", "{e} is very good at {v}."),
        questions=("Q: What sport does {e} practise? A:", "Q: Which sport is {e} good at? A:",
                   "Q: What does {e} do every weekend? A:"),
    )),
}


@dataclass(frozen=True)
class FactsSyntheticConfig:
    """`n_entities` invented people, each with the first `attributes` attributes of `ATTRIBUTES`."""

    n_entities: int = 500
    attributes: int = 4
    seed: int = 0
    qa_holdout: str = "template"  # "template" or "entity"; see rmt.tasks.factqa
    n_validation: int = 200  # held-out facts asked in the validation split; the rest go to test

    def __post_init__(self) -> None:
        if self.n_entities < 2:
            raise ValueError(f"n_entities: expected >= 2, got {self.n_entities}")
        if self.n_entities > 20_000:  # keeps name sampling quick and names varied
            raise ValueError(f"n_entities: expected <= 20000, got {self.n_entities}")
        if not 1 <= self.attributes <= len(ATTRIBUTES):
            raise ValueError(f"attributes: expected 1..{len(ATTRIBUTES)}, got {self.attributes}")
        if self.qa_holdout not in HOLDOUTS:
            raise ValueError(f"qa_holdout: expected one of {HOLDOUTS}, got {self.qa_holdout!r}")
        if self.n_validation < 0:
            raise ValueError(f"n_validation: expected >= 0, got {self.n_validation}")


def make_names(n: int, rng: random.Random) -> list[str]:
    """`n` distinct two-part names built from `SYLLABLES` and `CODAS`, in the order drawn."""

    def part() -> str:
        return (rng.choice(SYLLABLES) + rng.choice(SYLLABLES) + rng.choice(CODAS)).capitalize()

    names: dict[str, None] = {}  # insertion-ordered set
    while len(names) < n:
        names[f"{part()} {part()}"] = None
    return list(names)


class FactsSynthetic(Task):
    name = "facts-synthetic"
    Config = FactsSyntheticConfig

    def __init__(self, config: FactsSyntheticConfig | None = None) -> None:
        super().__init__(config)
        rng = seeded_rng(self.config.seed, "facts")
        self.entities = make_names(self.config.n_entities, rng)
        self.attribute_names = list(ATTRIBUTES)[: self.config.attributes]
        # One value per (entity, attribute), entity-major so the facts read naturally in order.
        self.facts = [
            Fact(entity, attribute, rng.choice(ATTRIBUTES[attribute][0]))
            for entity in self.entities
            for attribute in self.attribute_names
        ]

    def _build_splits(self) -> dict[str, list[Example]]:
        relations = {name: ATTRIBUTES[name][1] for name in self.attribute_names}
        return build_fact_splits(self.facts, relations, self.config.qa_holdout, self.config.n_validation,
                                 seeded_rng(self.config.seed, "splits"))
