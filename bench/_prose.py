"""Varied synthetic prose for the vector-store benchmarks, generated deterministically from a seed.

A benchmark of search at 100,000 chunks needs a corpus of that size whose text behaves as documents do: a
vocabulary with a long tail (names of people, places, products, part numbers and tickets that few chunks
hold, beside common words that most hold), files that keep to one subject, and questions that share some
words with the text that answers them and not others. Nothing here is copied from anywhere: sentences are
drawn from templates written for this file, filled from per-topic word lists and from names made of
syllables, so that the same seed always gives the same files and questions.

    corpus = Prose(seed=7)
    doc = corpus.document(index=12, paragraphs=40)   # Document(title, topic, text, attributes)
    question = corpus.question(random.Random(3))      # (text, topic)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

# Each topic: nouns, verbs ("base" or "base:past" when irregular or doubling), adjectives. Files keep to one.
_TOPICS: dict[str, tuple[str, str, str]] = {
    "plumbing": (
        "valve pipe joint trap washer fitting drain faucet cartridge flange gasket cistern manifold boiler radiator",
        "tighten replace flush inspect seal drain solder bleed:bled insulate descale",
        "leaking corroded threaded copper galvanized pressurized blocked brass",
    ),
    "gardening": (
        "seedling bed compost mulch hedge root tuber bulb trellis greenhouse aphid pruner lawn border cutting",
        "prune water sow transplant fertilize harvest weed divide stake mulch",
        "shaded acidic waterlogged hardy perennial dormant leggy sandy",
    ),
    "astronomy": (
        "telescope eyepiece mount nebula galaxy comet filter tripod finder mirror lens eclipse meteor planet star",
        "align observe collimate photograph track focus calibrate catalogue",
        "faint equatorial refracting reflecting dark hazy bright polar",
    ),
    "bookkeeping": (
        "ledger invoice receipt account journal balance reconciliation accrual expense statement audit budget",
        "reconcile record post invoice approve reverse audit categorize",
        "overdue quarterly unpaid deferred provisional annual duplicate petty",
    ),
    "networking": (
        "router switch firewall subnet gateway cable packet latency bandwidth resolver certificate tunnel port",
        "configure route ping restart patch segment monitor forward",
        "wireless redundant encrypted saturated misconfigured static dynamic congested",
    ),
    "baking": (
        "dough loaf crust oven starter flour yeast crumb batter tin rack glaze proof scale pastry",
        "knead proof bake fold shape score rest dust",
        "dense sticky golden underbaked airy sourdough wholemeal crisp",
    ),
    "beekeeping": (
        "hive frame colony queen drone comb brood smoker super varroa swarm apiary feeder honey wax",
        "inspect requeen feed:fed split:split harvest treat smoke extract",
        "queenless aggressive docile overwintered weak crowded healthy capped",
    ),
    "railway signalling": (
        "signal interlocking track circuit relay point axle counter balise lever cabinet block aspect sleeper",
        "test isolate replace commission wire clear lock reset:reset",
        "failed occupied proven redundant trackside automatic manual faulty",
    ),
    "sailing": (
        "mainsail jib halyard sheet winch tiller rudder keel mooring anchor cleat boom spinnaker hull mast",
        "reef hoist trim:trimmed tack moor anchor furl caulk",
        "close-hauled fouled chafed heavy light gusty sheltered tidal",
    ),
    "photography": (
        "aperture shutter sensor lens tripod flash exposure histogram filter raw print frame studio portrait",
        "expose meter focus bracket retouch crop:cropped calibrate frame",
        "overexposed grainy sharp blurred wide telephoto backlit candid",
    ),
    "dentistry": (
        "molar filling crown enamel gum plaque implant root canal brace veneer cavity x-ray scaler floss",
        "extract fill polish scale whiten numb examine bond",
        "sensitive impacted chipped inflamed decayed temporary porcelain routine",
    ),
    "hydrology": (
        "aquifer catchment gauge flood discharge reservoir weir sediment borehole runoff levee spillway stream",
        "measure model:modelled divert sample dredge monitor forecast recharge",
        "saturated seasonal brackish turbid upstream downstream peak shallow",
    ),
    "textile dyeing": (
        "dyebath mordant fibre skein vat indigo madder alum fabric yarn loom swatch colourway rinse batch",
        "dye rinse scour mordant steam mix soak dry",
        "colourfast faded uneven woollen silken natural synthetic mottled",
    ),
    "orchestral music": (
        "score bow reed baton rehearsal conductor string timpani overture tempo section concerto cadenza",
        "rehearse tune conduct transpose phrase rosin bow:bowed record",
        "flat sharp muted staccato legato brassy orchestral solo",
    ),
    "volcanology": (
        "crater vent magma lava ash plume fissure caldera tremor seismometer dome tephra fumarole flank",
        "monitor sample survey erupt vent map:mapped evacuate measure",
        "active dormant explosive effusive molten sulphurous unstable restless",
    ),
    "warehouse logistics": (
        "pallet forklift dock shipment barcode rack manifest picker carton inventory depot consignment bay",
        "pick pack ship:shipped scan:scanned stack load dispatch restock",
        "damaged misrouted urgent bulky fragile outbound inbound backordered",
    ),
    "equine care": (
        "hoof saddle bridle farrier paddock stable girth mane fetlock bit rug hay colic laminitis",
        "groom shoe:shod muck trim:trimmed lunge tack rug:rugged exercise",
        "lame skittish sound overweight shod barefoot sweaty grazing",
    ),
    "pottery": (
        "kiln glaze clay wheel slip bisque wedge trimming tool crackle stoneware porcelain raku bat cone",
        "wedge trim:trimmed fire glaze centre burnish reclaim polish",
        "leather-hard bone-dry cracked warped glossy matte underfired vitrified",
    ),
    "payroll": (
        "payslip salary deduction pension overtime allowance bonus contract timesheet tax code employee",
        "calculate deduct approve submit:submitted process backdate audit amend",
        "gross net monthly weekly statutory salaried hourly retroactive",
    ),
    "solar power": (
        "panel inverter battery string charger array bracket cable meter optimizer roof tilt shading",
        "install mount wire clean inspect commission isolate upgrade",
        "shaded monocrystalline grid-tied off-grid degraded south-facing efficient dusty",
    ),
    "winemaking": (
        "grape must barrel cork vintage tannin sediment yeast press vat cellar sulphite bottle lees",
        "ferment press rack bottle age blend taste sterilize",
        "oaky tannic dry sweet cloudy corked young mature",
    ),
    "mountaineering": (
        "crampon rope harness carabiner ridge glacier crevasse belay anchor summit ice-axe altitude camp",
        "belay rappel:rappelled acclimatize rope descend traverse anchor navigate",
        "exposed icy rocky steep avalanche-prone technical remote loose",
    ),
    "databases": (
        "index query table schema transaction replica vacuum migration cursor partition deadlock backup",
        "index vacuum migrate replicate partition optimize restore query",
        "slow bloated indexed normalized sharded transactional stale consistent",
    ),
    "bridge inspection": (
        "girder bearing deck pier abutment cable rivet weld joint truss span parapet scour crack",
        "inspect repair paint grout replace measure tension survey",
        "corroded fatigued cracked suspended cantilevered spalled rusted sound",
    ),
    "archives": (
        "manuscript folio catalogue box register deed map ledger photograph accession reading room vault",
        "catalogue digitize conserve box label:labelled retrieve index transcribe",
        "fragile foxed bound loose uncatalogued restricted handwritten archival",
    ),
    "aircraft maintenance": (
        "propeller rotor fuselage landing gear hydraulic line logbook airframe turbine wing flap rivet",
        "inspect overhaul torque lubricate sign replace test ground",
        "airworthy grounded worn serviceable corroded pressurized scheduled unscheduled",
    ),
    "forestry": (
        "sapling canopy stand thinning harvester chainsaw timber stump clearing seedling bark beetle",
        "thin:thinned fell plant survey prune mark replant measure",
        "mature coniferous deciduous windblown diseased dense sparse native",
    ),
    "coffee roasting": (
        "bean roaster drum crack batch grinder chaff profile cupping origin green burr roast",
        "roast cool grind:ground cup:cupped weigh blend degas:degassed store",
        "light dark underdeveloped scorched fruity bitter washed natural",
    ),
    "security operations": (
        "alert incident token password credential endpoint log phishing patch vulnerability firewall key",
        "rotate revoke patch triage escalate isolate audit scan:scanned",
        "compromised suspicious expired privileged encrypted stale critical unpatched",
    ),
    "urban transit": (
        "tram bus timetable platform depot ticket route fare stop shelter junction fleet driver",
        "schedule reroute board refuel:refuelled service dispatch clean count",
        "delayed crowded accessible overnight express articulated cancelled peak",
    ),
}

_FIRST_NAMES = """
Ada Bram Cleo Dario Edith Femi Greta Hugo Ines Jonas Kaia Lior Mina Nils Odette Pavel Quinn Rosa Soren Talia
Umar Vera Wren Ximena Yusuf Zora Anouk Bastien Carmen Dmitri Elif Farid Gwen Hamid Ilse Joaquin Keiko Lars
Marisol Niamh Oskar Priya Rafael Saoirse Tomas Ursula Viktor Wanjiru Yara Zeno
""".split()  # noqa: SIM905
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_PERIODS = ["days", "weeks", "months", "hours"]
_ADVERBS = [
    "quickly",
    "slowly",
    "unevenly",
    "sharply",
    "gradually",
    "suddenly",
    "noisily",
    "quietly",
    "badly",
    "steadily",
]
_EVENTS = (
    "inspection",
    "audit",
    "storm",
    "holiday season",
    "winter shutdown",
    "annual review",
    "office move",
    "power cut",
    "heatwave",
    "handover",
)
_ORG_KINDS = ("Institute", "Cooperative", "Works", "Authority", "Society", "Trust", "Guild", "Laboratory")
_PLACE_ENDS = ("ford", "by", "ton", "field", "mouth", "wick", "stead", " Valley", " Harbour", " Cross")
_TEAMS = ("north", "south", "east", "west", "central", "field", "night", "support")

_ONSETS = [
    "b",
    "br",
    "c",
    "ch",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "j",
    "k",
    "kl",
    "l",
    "m",
    "n",
    "p",
    "pr",
    "r",
    "s",
    "sh",
    "st",
    "t",
    "tr",
    "v",
    "w",
    "z",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"]
_CODAS = ["n", "r", "l", "s", "th", "nd", "rt", "ck", "m", "x", "ld", "st"] + [""] * 6


@dataclass(frozen=True, slots=True)
class Document:
    """One generated file: its title, topic, text (Markdown-ish prose) and the attributes a store gives it."""

    title: str
    topic: str
    text: str
    attributes: dict[str, Any]


def _past(verb: str) -> tuple[str, str]:
    base, _, past = verb.partition(":")
    if past:
        return base, past
    if base.endswith("e"):
        return base, base + "d"
    if base.endswith("y") and base[-2] not in "aeiou":
        return base, base[:-1] + "ied"
    return base, base + "ed"


def _third(base: str) -> str:
    if base.endswith(("s", "sh", "ch", "x", "z")):
        return base + "es"
    if base.endswith("y") and base[-2] not in "aeiou":
        return base[:-1] + "ies"
    return base + "s"


def _plural(noun: str) -> str:
    last = noun.split()[-1]
    head = noun[: len(noun) - len(last)]
    if last.endswith(("s", "sh", "ch", "x", "z")):
        return head + last + "es"
    if last.endswith("y") and last[-2] not in "aeiou":
        return head + last[:-1] + "ies"
    return head + last + "s"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _Topic:
    def __init__(self, name: str, nouns: str, verbs: str, adjectives: str) -> None:
        self.name = name
        # A few nouns are two words ("root canal", "landing gear"): `_COMPOUNDS` joins them again.
        self.nouns = _join_compounds(nouns.split())
        self.verbs = [_past(v) for v in verbs.split()]
        self.adjectives = adjectives.split()


_COMPOUNDS = {("root", "canal"), ("landing", "gear"), ("tax", "code"), ("reading", "room"), ("track", "circuit")}


def _join_compounds(words: list[str]) -> list[str]:
    out: list[str] = []
    for word in words:
        if out and (out[-1], word) in _COMPOUNDS:
            out[-1] = f"{out[-1]} {word}"
        else:
            out.append(word)
    return out


class Prose:
    """Documents and questions over thirty topics, the same ones for the same seed."""

    def __init__(self, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.topics = [_Topic(name, *words) for name, words in _TOPICS.items()]
        self.surnames = sorted({self._word(rng, 2, 3).capitalize() for _ in range(2500)})
        self.places = sorted({self._word(rng, 1, 2).capitalize() + rng.choice(_PLACE_ENDS) for _ in range(1500)})
        self.brands = sorted({self._word(rng, 2, 2).capitalize() for _ in range(600)})
        self.orgs = [f"{rng.choice(self.places)} {rng.choice(_ORG_KINDS)}" for _ in range(400)]
        self.seed = seed

    @staticmethod
    def _word(rng: random.Random, low: int, high: int) -> str:
        return "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(low, high))
        )

    def person(self, rng: random.Random) -> str:
        return f"{rng.choice(_FIRST_NAMES)} {rng.choice(self.surnames)}"

    def _fill(self, rng: random.Random, topic: _Topic) -> dict[str, str]:
        n1, n2, n3 = rng.sample(topic.nouns, 3)
        (v1, p1), (v2, p2) = rng.sample(topic.verbs, 2)
        a1, a2 = rng.sample(topic.adjectives, 2)
        return {
            "noun": n1,
            "noun2": n2,
            "noun3": n3,
            "nouns": _plural(n1),
            "nouns2": _plural(n2),
            "verb": v1,
            "verb2": v2,
            "verbs": _third(v1),
            "past": p1,
            "past2": p2,
            "adj": a1,
            "adj2": a2,
            "a_adj": _article(a1),
            "a_noun": _article(n1),
            "person": self.person(rng),
            "place": rng.choice(self.places),
            "org": rng.choice(self.orgs),
            "brand": rng.choice(self.brands),
            "weekday": rng.choice(_WEEKDAYS),
            "month": rng.choice(_MONTHS),
            "period": rng.choice(_PERIODS),
            "adverb": rng.choice(_ADVERBS),
            "event": rng.choice(_EVENTS),
            "n": str(rng.randint(2, 12)),
            "pct": str(rng.randint(3, 97)),
            "year": str(rng.randint(1998, 2025)),
            "money": f"{rng.randint(12, 900)}",
            "money2": f"{rng.randint(1000, 9000)}",
            "code": f"{rng.choice('ABCDEFGHKLMNPRSTVXZ')}{rng.choice('ABCDEFGHKLMNPRSTVXZ')}-{rng.randint(100, 9999)}",
            "ticket": f"#{rng.randint(10000, 999999)}",
        }

    def sentence(self, rng: random.Random, topic: _Topic) -> str:
        text = rng.choice(_SENTENCES).format(**self._fill(rng, topic))
        return text[0].upper() + text[1:]

    def document(self, index: int, paragraphs: int) -> Document:
        """File number `index` of the corpus: `paragraphs` paragraphs of 3 to 8 sentences on one topic."""
        rng = random.Random(self.seed * 1_000_003 + index)
        topic = self.topics[rng.randrange(len(self.topics))]
        fill = self._fill(rng, topic)
        title = rng.choice(_TITLES).format(**fill)
        title = title[0].upper() + title[1:]
        parts = [f"# {title}", f"Prepared by {fill['person']} for the {rng.choice(_TEAMS)} team at {fill['place']}."]
        for p in range(paragraphs):
            if p and p % 6 == 0:
                heading = rng.choice(_TITLES).format(**self._fill(rng, topic))
                parts.append(f"## {heading[0].upper()}{heading[1:]}")
            parts.append(" ".join(self.sentence(rng, topic) for _ in range(rng.randint(3, 8))))
        attributes = {
            "category": topic.name,
            "year": rng.randint(2015, 2025),
            "team": rng.choice(_TEAMS),
            "confidential": rng.random() < 0.2,
        }
        return Document(title, topic.name, "\n\n".join(parts) + "\n", attributes)

    def question(self, rng: random.Random) -> tuple[str, str]:
        """A question someone might ask of the corpus, and its topic."""
        topic = self.topics[rng.randrange(len(self.topics))]
        text = rng.choice(_QUESTIONS).format(**self._fill(rng, topic))
        return text[0].upper() + text[1:], topic.name


_TITLES = (
    "notes on the {adj} {noun}",
    "how we {verb} the {nouns} at {place}",
    "{noun} and {noun2}: a field guide",
    "the {year} review of {nouns}",
    "when the {noun} is {adj}",
    "checklist for the {noun2} before the {event}",
)

_SENTENCES = (
    "the {adj} {noun} in {place} was {past} by {person} on {weekday} morning.",
    "before you {verb} the {noun}, make sure the {noun2} is not {adj2}.",
    "{person} recommends that every {noun} be {past} at least once every {n} {period}.",
    "according to the {year} survey by the {org}, about {pct} percent of {nouns} were {adj}.",
    "when the {noun} gets {adj}, the {noun2} may {verb2} {adverb} and the {noun3} will need attention.",
    "model {code} from {brand} ships with {a_adj} {adj} {noun} and a spare {noun2}.",
    "most trouble with {a_adj} {adj} {noun} comes from a {noun2} that nobody {past2} after the last {event}.",
    "in {month}, the crew at {place} {past} {n} {nouns} and logged each one under ticket {ticket}.",
    "{a_adj} {adj} {noun} costs roughly {money} to {verb}, while a new {noun2} is closer to {money2}.",
    "do not {verb} {a_noun} {noun} while the {noun2} is still {adj}; wait {n} {period} and look again.",
    "the guide by {person} explains how the {noun} and the {noun2} work together in {a_adj} {adj} {noun3}.",
    "{person} asked whether the {nouns} at {place} could be {past} before the {event} in {month}.",
    "keep a log of every {noun} you {verb}, with the date, the {noun2}, and who {past2} it.",
    "compared with the {adj2} kind, {a_adj} {adj} {noun} lasts about {n} times longer in normal use.",
    "the short answer is that the {noun} should stay {adj} and the {noun2} should never be {past2} in a hurry.",
    "nobody at {place} expected the {noun3} to {verb2} so {adverb} after the {event}.",
    "if the {noun} {verbs} {adverb}, check the {noun2} first and only then the {noun3}.",
    "{brand} stopped making part {code} in {year}, so most sites now {verb} the {noun} instead.",
    "the {org} keeps a register of {adj} {nouns}, updated every {n} {period} by {person}.",
    "a {noun2} that looks {adj2} from the outside can still hide {a_adj} {adj} {noun} underneath.",
)

_QUESTIONS = (
    "how often should the {adj} {noun} be {past}?",
    "what should I check before I {verb} the {noun}?",
    "why does the {noun} {verb2} {adverb} after the {event}?",
    "what did {person} say about the {nouns} at {place}?",
    "how much does it cost to {verb} {a_adj} {adj} {noun}?",
    "is it safe to {verb} {a_noun} {noun} while the {noun2} is {adj}?",
    "which {noun2} works with {a_adj} {adj} {noun}?",
    "what goes wrong when {a_noun} {noun} is {adj}?",
    "{noun} {adj} {noun2} fix",
    "who is responsible for the {nouns} at {place}?",
)
