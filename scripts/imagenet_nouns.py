#!/usr/bin/env python3
"""ImageNet-1k class table with a one-word, everyday English noun per class.

Writes assets/tiny/imagenet_classes.tsv: a header line, then 1000 lines in class-index order
(the order of every ImageNet-1k classifier's logits), tab-separated:

    index   wnid        name                 noun
    0       n01440764   tench                fish
    281     n02123045   tabby                cat
    967     n07920052   espresso             coffee

- wnid: the WordNet 3.0 noun synset id, from timm's `timm/data/_info/imagenet_synsets.txt`
  (the standard sorted-wnid class order).
- name: torchvision's `_IMAGENET_CATEGORIES` (`torchvision/models/_meta.py`), the usual short
  human-readable label (e.g. "tabby", "golden retriever", "crane bird").
- noun: the basic-level noun a person would use to describe the photo in one word (lower case,
  letters only): golden retriever -> dog, tabby -> cat, goldfinch -> bird, espresso -> coffee.

Rule for `noun` (deterministic): walk from the class's synset up WordNet's hypernym chain
(the synset itself first, then the first hypernym each time, `@` or instance `@i`) and stop at
the first synset that has a lemma in WHITELIST below (lemmas tried in WordNet's order); the
noun is that whitelist entry's value. WHITELIST is a curated list of basic-level nouns (dog,
cat, bird, fish, car, ship, chair, apple, ...); a few entries rename a lemma (`hen=chicken`,
`hog` via its lemma `pig`, `ear=corn`, `notebook_computer=laptop`) where WordNet's word is not the
everyday one or is ambiguous. Abstract nouns (organism, animal, mammal, artifact, device,
structure, container, instrument, ...) are deliberately absent: the walk stops at dog/cat/bird
long before them. If the chain reaches no whitelist entry, the fallback is the last word of
`name` when it is a plain lower-case word that WordNet knows as a noun, else the synset's first
one-word lemma; the script prints every class that needed the fallback (none, currently).

Inputs (all from package registries, nothing else):

    pip download --no-deps timm==1.0.31 torchvision==0.29.2 -d WHEELS   # read as zip files,
                                                                      # not installed
    apt-get install wordnet-base       # WordNet 3.0: /usr/share/wordnet/data.noun

Run from anywhere (standard library only):

    python3 scripts/imagenet_nouns.py WHEELS/timm-1.0.31-py3-none-any.whl \\
        WHEELS/torchvision-0.29.2-py3-none-manylinux_2_28_x86_64.whl \\
        [/usr/share/wordnet/data.noun]

It prints how many classes map to each noun (top 40), the number of distinct nouns and the
fallback classes. Reruns give a byte-identical file.
"""

from __future__ import annotations

import ast
import collections
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "assets/tiny/imagenet_classes.tsv"
DATA_NOUN = "/usr/share/wordnet/data.noun"

# `lemma` (WordNet spelling, lower case, `_` for spaces) or `lemma=noun`. Grouped loosely by
# topic; order does not matter. Only lemmas on some ImageNet class's hypernym chain ever match.
WHITELIST_TEXT = """
# fish and other water animals
fish goldfish shark ray stingray eel jellyfish anemone coral worm snail slug
sea_slug=slug conch chiton nautilus crab hermit_crab=crab lobster spiny_lobster=lobster crayfish isopod=bug
starfish sea_urchin=urchin sea_cucumber=cucumber whale killer_whale=whale dugong seal
# amphibians and reptiles
frog salamander newt turtle lizard gecko iguana chameleon komodo_dragon=lizard crocodile
alligator dinosaur snake
# arachnids and insects
trilobite=fossil harvestman=spider scorpion spider tick centipede beetle ladybug fly bee ant
grasshopper cricket cockroach mantis cicada leafhopper=insect lacewing=insect
walking_stick=insect dragonfly damselfly=dragonfly butterfly
# birds: the everyday kinds keep their name, everything else is "bird"
bird game_bird=bird cock=rooster hen=chicken ostrich peacock parrot owl eagle vulture hawk duck goose swan
stork heron crane flamingo pelican penguin hummingbird toucan
# mammals
dog wild_dog=dog wolf coyote fox hyena cat cougar lynx leopard snow_leopard=leopard jaguar lion tiger cheetah bear panda
mongoose meerkat rabbit hare hamster porcupine squirrel marmot beaver guinea_pig=rodent
horse zebra pig wild_boar=boar warthog hippo ox=cow buffalo bison sheep bighorn=sheep goat
antelope gazelle camel llama weasel mink polecat=weasel ferret otter skunk badger armadillo
sloth orangutan gorilla chimpanzee ape monkey lemur elephant tusker=elephant echidna platypus
kangaroo koala wombat
# people
ballplayer=player groom scuba_diver=diver
# plants, fungi, food
flower orchid=flower rapeseed=flower corn ear=corn acorn hip=berry buckeye=chestnut
fungus=mushroom agaric=mushroom bolete=mushroom mushroom hay
apple strawberry orange lemon fig pineapple banana jackfruit custard_apple=fruit pomegranate
cabbage broccoli cauliflower squash cucumber artichoke pepper cardoon=vegetable potato
guacamole soup stew dessert ice_cream=dessert popsicle bread bagel pretzel burger hotdog
carbonara=pasta chocolate_sauce=chocolate dough meatloaf pizza potpie=pie burrito wine coffee
cup eggnog plate menu
# landscape
mountain alp=mountain volcano valley cliff promontory=cliff reef geyser lakeside=lake
seashore=beach sandbar=beach bubble
# vehicles and craft
car taxi ambulance jeep limousine van truck moving_van=truck fire_engine=truck bus train
locomotive=train freight_car=train passenger_car=train tram bicycle motorcycle moped=scooter
scooter tricycle unicycle tractor harvester=tractor thresher=tractor forklift snowmobile
snowplow go-kart=kart golfcart=cart cart handcart=cart rickshaw barrow=wheelbarrow sled
tank half_track=truck recreational_vehicle=camper trailer amphibious_vehicle=vehicle
boat canoe sailboat=boat gondola ship warship=ship sailing_vessel=ship wreck=shipwreck
submarine airplane warplane=airplane airship balloon parachute missile=rocket projectile=rocket
space_shuttle=shuttle
# buildings and places
castle church mosque palace monastery stupa=temple barn greenhouse library cinema
restaurant bakery barbershop bookstore shop grocery_store=supermarket prison planetarium
apiary=beehive boathouse birdhouse lighthouse tower water_tower=tower yurt tent
cliff_dwelling=ruins lumbermill=sawmill sawmill fountain bridge dam dock pier patio
breakwater drilling_platform=rig altar obelisk megalith=monument totem_pole=totem
triumphal_arch=arch dome roof vault=ceiling fence stone_wall=wall door shoji=door
bell_cote=bell maypole stage scoreboard street_sign=sign sign traffic_light=light
home_theater=television
# furniture and household
chair throne sofa bed crib cradle bassinet=crib desk table bookcase wardrobe cabinet
file_cabinet=cabinet chest_of_drawers=dresser chest entertainment_center=cabinet
pillow quilt rug mat doormat=mat curtain lamp lampshade=lamp candle clock watch stopwatch
hourglass sundial bathtub toilet_seat=toilet washbasin=sink tub shower_curtain=curtain
window_shade=window window_screen=window mosquito_net=net fire_screen=fireplace
refrigerator stove microwave toaster dishwasher washer vacuum iron
waffle_iron=waffle rotisserie=grill dutch_oven=pot crock_pot=pot coffee_maker=coffeemaker
teapot coffeepot caldron=cauldron pot pan wok ladle spatula spoon knife strainer
mixing_bowl=bowl measuring_cup=cup mortar bowl mug glass bottle jug pitcher vase barrel rain_barrel=barrel bucket can
beaker dish tray plate_rack=rack rack shaker corkscrew opener basket bag backpack purse wallet
box crate carton=box safe mailbox envelope packet=package ashcan=bin binder
# clothing and accessories
coat robe abaya=robe vestment=robe gown dress skirt hoopskirt=skirt shirt jersey=shirt
sweater sweatshirt vest suit uniform military_uniform=soldier kimono poncho cloak apron bib
diaper swimsuit maillot=swimsuit bikini brassiere=bra pajama=pajamas jean=jeans
hat cap helmet mask oxygen_mask=mask mortarboard=cap seat_belt=seatbelt necktie=tie scarf stole=scarf sock stocking shoe boot
sandal clog=shoe mitten necklace wig sunglasses sunglass=sunglasses knee_pad=kneepad
buckle handkerchief dishrag=towel towel velvet wool=yarn
# music
guitar banjo violin cello harp piano upright=piano organ accordion harmonica flute oboe
bassoon saxophone trumpet trombone horn drum steel_drum=drum gong bell marimba=xylophone
maraca ocarina panpipe=flute drumstick
# tools, devices, electronics
hammer screwdriver shovel axe hatchet=axe chainsaw power_drill=drill plane broom mop
swab=mop plunger plow lawn_mower=lawnmower paintbrush=brush paddle saw nail screw chain lock padlock=lock combination_lock=lock
knot hook pole coil pen quill=pen pencil_sharpener=sharpener rubber_eraser=eraser ruler rule=ruler
slide_rule=ruler scale barometer compass stethoscope syringe thimble safety_pin=pin
hair_slide=clip matchstick=match lighter torch spotlight flagpole=flag whistle umbrella turnstile
phone telephone=phone cellphone=phone computer laptop notebook_computer=laptop
monitor screen keyboard space_bar=keyboard typewriter_keyboard=typewriter mouse joystick
printer photocopier=copier modem radio television loudspeaker=speaker microphone
cassette cassette_player=stereo cd_player=stereo tape_player=stereo ipod=ipod
hard_disc=disk website camera projector binoculars loupe=magnifier telescope radio_telescope=telescope
solar_dish=dish oscilloscope odometer=speedometer parking_meter=meter switch remote
cash_machine=atm vending_machine=machine slot=machine sewing_machine=machine
abacus fan heater space_heater=heater radiator hand_blower=hairdryer oil_filter=filter
disk_brake=brake car_wheel=wheel paddlewheel=wheel potter's_wheel=pottery pinwheel
gas_pump=pump pump crane forklift mousetrap carousel swing spindle reel tripod
pedestal stretcher crutch car_mirror=mirror grille=car wing neck_brace=brace muzzle snorkel pick
bow cannon rifle assault_rifle=rifle revolver=gun gun shield armor breastplate=armor
cuirass=armor chain_mail=armor body_armor=armor scabbard=sword holster guillotine
carpenter's_kit=toolbox
# sport and toys
ball baseball basketball volleyball puck racket ski barbell dumbbell
balance_beam=gymnast horizontal_bar=gymnast parallel_bars=gymnast punching_bag=bag
teddy jigsaw_puzzle=puzzle crossword maze piggy_bank=bank
# paper, cosmetics, misc.
book_jacket=book comic_book=comic toilet_tissue=paper paper_towel=towel
face_powder=makeup lipstick lotion perfume sunscreen hair_spray=hairspray
soap_dispenser=soap band_aid=bandage bandage pill_bottle=bottle jack-o'-lantern=pumpkin
honeycomb plaque bannister=railing park_bench=bench spider_web=web manhole_cover=manhole nipple=bottle
"""


def parse_whitelist(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for tok in line.split():
            lemma, _, noun = tok.partition("=")
            noun = noun or lemma
            if not re.fullmatch(r"[a-z]+", noun):
                raise ValueError(f"whitelist noun {noun!r} is not one lower-case word")
            if out.get(lemma, noun) != noun:
                raise ValueError(f"whitelist lemma {lemma!r} listed twice with different nouns")
            out[lemma] = noun
    return out


WHITELIST = parse_whitelist(WHITELIST_TEXT)


def read_wnids(timm_wheel: str) -> list[str]:
    with zipfile.ZipFile(timm_wheel) as z:
        wnids = z.read("timm/data/_info/imagenet_synsets.txt").decode().split()
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise ValueError("expected 1000 distinct wnids")
    return wnids


def read_names(torchvision_wheel: str) -> list[str]:
    with zipfile.ZipFile(torchvision_wheel) as z:
        src = z.read("torchvision/models/_meta.py").decode()
    for node in ast.parse(src).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "_IMAGENET_CATEGORIES"):
            names = ast.literal_eval(node.value)  # a literal list of strings, nothing executed
            if len(names) != 1000:
                raise ValueError("expected 1000 names")
            return names
    raise ValueError("_IMAGENET_CATEGORIES not found")


def read_wordnet(path: str) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemmas, noun hypernym offsets), from WordNet 3.0 data.noun."""
    synsets = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue  # license header
            fields = line.split(" | ", 1)[0].split()
            offset, w_cnt = fields[0], int(fields[3], 16)
            lemmas = [fields[4 + 2 * i] for i in range(w_cnt)]
            p = 4 + 2 * w_cnt
            hypers = []
            for i in range(int(fields[p])):
                sym, target, pos, _ = fields[p + 1 + 4 * i:p + 5 + 4 * i]
                if sym in ("@", "@i") and pos == "n":
                    hypers.append(target)
            synsets[offset] = (lemmas, hypers)
    return synsets


def chain(synsets, wnid: str):
    offset = wnid[1:]
    while offset is not None:
        lemmas, hypers = synsets[offset]
        yield lemmas
        offset = hypers[0] if hypers else None


def noun_for(synsets, nouns_in_wordnet: set[str], wnid: str, name: str) -> tuple[str, bool]:
    for lemmas in chain(synsets, wnid):
        for lemma in lemmas:
            lemma = re.sub(r"\(.*\)$", "", lemma).lower()  # adjective markers like (a)
            if lemma in WHITELIST:
                return WHITELIST[lemma], False
    last = name.split()[-1]
    if re.fullmatch(r"[a-z]+", last) and last in nouns_in_wordnet:
        return last, True
    for lemma in synsets[wnid[1:]][0]:
        if re.fullmatch(r"[A-Za-z]+", lemma):
            return lemma.lower(), True
    raise ValueError(f"no noun for {wnid} {name}")


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(f"usage: {sys.argv[0]} TIMM_WHEEL TORCHVISION_WHEEL [DATA_NOUN]")
    wnids = read_wnids(sys.argv[1])
    names = read_names(sys.argv[2])
    synsets = read_wordnet(sys.argv[3] if len(sys.argv) == 4 else DATA_NOUN)
    nouns_in_wordnet = {lemma.lower() for lemmas, _ in synsets.values() for lemma in lemmas}

    rows, fallbacks = [], []
    for i, (wnid, name) in enumerate(zip(wnids, names)):
        if "\t" in name or "\n" in name:
            raise ValueError(f"bad name {name!r}")
        noun, fell_back = noun_for(synsets, nouns_in_wordnet, wnid, name)
        rows.append(f"{i}\t{wnid}\t{name}\t{noun}\n")
        if fell_back:
            fallbacks.append((i, wnid, name, noun))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("index\twnid\tname\tnoun\n" + "".join(rows))

    counts = collections.Counter(r.rstrip("\n").split("\t")[3] for r in rows)
    print(f"wrote {OUT.relative_to(ROOT)}: {len(rows)} classes, {len(counts)} distinct nouns")
    print("top 40 nouns:", ", ".join(f"{n} {c}" for n, c in counts.most_common(40)))
    print(f"{len(fallbacks)} fallback classes:")
    for i, wnid, name, noun in fallbacks:
        print(f"  {i}\t{wnid}\t{name}\t-> {noun}")
    unused = sorted(set(WHITELIST) - {
        lemma.lower() for wnid in wnids for lemmas in chain(synsets, wnid) for lemma in lemmas})
    if unused:
        print(f"whitelist lemmas on no class's chain ({len(unused)}): {' '.join(unused)}")


if __name__ == "__main__":
    main()
