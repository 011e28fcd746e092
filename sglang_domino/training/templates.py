"""This project's own prompt text: templated arithmetic problems, writing and advice tasks, and chat questions.

Plain strings only; :mod:`sglang_domino.training.sources` turns them into prompts (kind, source, group). The first
sets (``math_problems``, ``writing_tasks``) are what the shipped held-out prompts were selected from and must not
change: editing them would change which prompts ``data heldout --write`` selects. Later sets
(``writing_tasks_extra``, ``chat_questions``) are separate functions, kept under their own source name, and
use topics and items of their own, so they add training prompts without touching the held-out selection.

Why templates at all: the responses are the target's own (self-distillation), so what a prompt contributes is
the *kind* of answer it draws out (a poem, a list of tips, a polite refusal, a short factual reply). The public
chat and writing sources in PyPI/Debian are small (chatterbot-corpus gives ~700 questions), and a drafter
trained on data without a kind loses acceptance on it (the drafter's README, "v6 part 6 only").
"""

from __future__ import annotations

import random

# ---------------------------------------------------------------------------------------- arithmetic

_NAMES = ("Alice", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kate", "Liam",
          "Maya", "Noah", "Olga", "Priya", "Quinn", "Ravi", "Sofia", "Tom")
_ITEMS = ("apples", "marbles", "books", "stickers", "pencils", "cookies", "stamps", "cards", "shells", "coins")


def math_problems(n: int = 2400, seed: int = 0) -> list[str]:
    """Templated arithmetic word problems (GSM8K-like in form, simpler), generated from ``seed``, distinct."""
    rng = random.Random(f"math:{seed}")
    makers = [
        lambda: (lambda a, b, c, nm, it: f"{nm} has {a} {it}. {nm} buys {b} more and then gives {c} to a friend. "
                 f"How many {it} does {nm} have now?")(rng.randint(5, 90), rng.randint(2, 60), rng.randint(1, 30),
                                                        rng.choice(_NAMES), rng.choice(_ITEMS)),
        lambda: f"A train travels at {rng.randint(30, 180)} km/h for {rng.choice([1.5, 2, 2.5, 3, 4, 5])} hours. "
                f"How far does it travel?",
        lambda: f"What is {rng.randint(12, 999)} multiplied by {rng.randint(3, 99)}? Show your working.",
        lambda: f"A jacket costs ${rng.randint(20, 400)}. It is on sale for {rng.choice([10, 15, 20, 25, 30, 40, 50])}% "
                f"off. What is the sale price?",
        lambda: f"A rectangle is {rng.randint(2, 40)} cm wide and {rng.randint(2, 60)} cm long. What are its area "
                f"and its perimeter?",
        lambda: (lambda a, x, b: f"Solve for x: {a}x + {b} = {a * x + b}.")(rng.randint(2, 12), rng.randint(-20, 30),
                                                                            rng.randint(1, 50)),
        lambda: f"Convert {rng.randint(70, 1000)} minutes into hours and minutes.",
        lambda: "What is the average of " + ", ".join(str(rng.randint(1, 100)) for _ in range(rng.randint(3, 7))) + "?",
        lambda: f"Is {rng.randint(20, 500)} a prime number? Explain how you know.",
        lambda: (lambda nm, p, t: f"{nm} reads {p} pages a day. How many days will it take to finish a {t}-page "
                 f"book?")(rng.choice(_NAMES), rng.randint(5, 60), rng.randint(100, 900)),
        lambda: (lambda w, h: f"{w} workers can build a wall in {h} hours. How long would {w * 2} workers take, "
                 f"working at the same rate?")(rng.randint(2, 12), rng.randint(4, 48)),
        lambda: f"What is {rng.randint(2, 30)}% of {rng.randint(40, 2000)}?",
        lambda: (lambda a, b: f"A recipe needs {a} eggs for {b} people. How many eggs are needed for {b * 3} "
                 f"people?")(rng.randint(2, 6), rng.randint(2, 8)),
        lambda: f"What is the sum of all whole numbers from 1 to {rng.randint(10, 200)}?",
    ]
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(n * 3):
        if len(out) >= n:
            break
        text = rng.choice(makers)()
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


# ------------------------------------------------------------------------------------ writing (first set)

_TOPICS = ("the ocean", "autumn", "a rainy day in a city", "friendship", "learning to code", "the moon",
           "a lost key", "coffee", "mountains", "a robot who wants to paint", "trains", "the first day of school",
           "gardening", "a lighthouse", "winter mornings", "libraries", "a busy market", "honeybees", "the desert",
           "an old photograph", "bicycles", "a thunderstorm", "volcanoes", "a cat on a windowsill", "space travel",
           "a small bakery", "chess", "the internet", "rivers", "a birthday party", "forests", "electric cars",
           "recycling", "music", "a long journey", "penguins", "the city at night", "kindness", "a snowman",
           "the history of writing")
_ACTIVITIES = ("staying focused while studying", "learning a new language", "sleeping better", "saving money",
               "running a first 5k", "keeping houseplants alive", "writing clean Python code", "public speaking",
               "cooking for one", "reducing screen time", "preparing for a job interview", "travelling light",
               "starting a vegetable garden", "debugging a program", "making friends in a new city",
               "reading more books", "staying hydrated", "organising a small event", "taking better notes",
               "working from home")
_WRITING_TEMPLATES = (
    "Write a haiku about {t}.", "Write a short poem about {t}.", "Write a four-sentence story about {t}.",
    "Describe {t} in one vivid paragraph.", "Give me three interesting facts about {t}.",
    "Write a short, friendly social media post about {t}.", "Write a limerick about {t}.",
)
_ADVICE_TEMPLATES = (
    "Give me five practical tips for {a}.", "What are common mistakes people make when {a}?",
    "Write a short step-by-step plan for {a}.", "Why is {a} hard, and how can I get better at it?",
)
_EMAIL_TEMPLATES = (
    "Write a short, polite email to my landlord asking to fix a leaking tap.",
    "Write a short email to a colleague asking to move our meeting to Thursday.",
    "Write a thank-you note to a friend who helped me move house.",
    "Write a short message declining an invitation to a party, politely.",
    "Write a cover letter opening paragraph for a junior software developer job.",
    "Write a short apology email for missing a deadline.",
    "Write a product description for a reusable water bottle.",
    "Write a short welcome message for new members of a book club.",
)


def writing_tasks() -> list[str]:
    """The first writing and advice set (the shipped held-out writing prompts were selected from it)."""
    return ([tmpl.format(t=t) for t in _TOPICS for tmpl in _WRITING_TEMPLATES]
            + [tmpl.format(a=a) for a in _ACTIVITIES for tmpl in _ADVICE_TEMPLATES]
            + list(_EMAIL_TEMPLATES))


# ----------------------------------------------------------------------------------- writing (second set)

# Topics and activities of their own (none of the first set's), so no held-out topic gains new prompts.
_TOPICS_2 = (
    "a summer festival", "the first snowfall", "an abandoned train station", "a village by the sea", "fireflies",
    "a road trip with friends", "a grandmother's kitchen", "city pigeons", "a night at the museum", "tea",
    "a broken umbrella", "the smell of fresh bread", "a quiet Sunday morning", "a thunderous waterfall",
    "a shy dragon", "an old violin", "a map to a hidden treasure", "the last day of summer", "a busy airport",
    "a foggy harbour", "a child's first bicycle ride", "a tree house", "an astronaut's first spacewalk",
    "a letter that arrived fifty years late", "a lonely robot vacuum", "street food", "a mountain cabin",
    "the northern lights", "a school science fair", "an empty playground", "a clock that runs backwards",
    "a kite on a windy day", "a neighbourhood cat", "a farmers' market", "an old bookshop",
    "dolphins", "a camping trip", "a snow day", "a jazz club", "a paper boat", "a desert island", "the sunrise",
    "a forgotten garden", "wolves", "an ice-skating rink", "a village bakery at dawn", "owls", "a sandcastle",
    "an orchestra tuning up", "a train crossing the countryside", "a lost puppy", "a haunted house",
    "a football match", "a public swimming pool", "a spaceship made of cardboard", "a time traveller",
    "a talking parrot", "the smell of rain", "a carnival at night", "a hot air balloon", "the Arctic",
    "a coral reef", "a quiet library on a stormy night", "a bus ride home", "a new pair of shoes",
    "a friendly ghost", "the first flower of spring", "a sleepy town", "a mystery novel", "a video game hero",
    "a clockmaker's shop", "an elephant", "a campfire story", "the wind", "a castle on a hill",
    "a marathon runner", "a bridge at sunset", "a night train", "a surprise party", "an inventor's workshop",
    "the sound of the sea", "a tiny house", "a city park in spring", "falling leaves", "a picnic",
    "a school trip", "a mountain lake", "a firefighter", "a nurse on a night shift", "a village fair",
    "the first human on Mars", "a migrating flock of geese", "an old radio", "a wedding", "a lemon tree",
    "a rainy bus stop", "a shooting star", "a teacher's last day", "a pet goldfish", "a jungle expedition",
    "a snowy forest", "a street musician", "a mysterious key", "a sunflower field", "a robot learning to cook",
)
_WRITING_TEMPLATES_2 = (
    "Write a short story for children about {t}.", "Write a two-stanza rhyming poem about {t}.",
    "Write a diary entry about {t}.", "Write a short dialogue between two friends about {t}.",
    "Write the opening paragraph of a novel about {t}.", "Write a song chorus about {t}.",
    "Write an acrostic poem about {t}.", "Write a short speech about {t}.",
    "Write a free-verse poem about {t}.", "Describe {t} using all five senses.",
)
_ACTIVITIES_2 = (
    "waking up early", "learning to play the guitar", "cooking healthy meals on a budget", "studying for exams",
    "training a puppy", "keeping a tidy desk", "writing a good essay", "learning to swim as an adult",
    "managing stress at work", "planning a holiday", "building a daily exercise habit", "drawing portraits",
    "making a budget", "learning touch typing", "giving constructive feedback", "starting a podcast",
    "baking bread at home", "talking to a new neighbour", "keeping a journal", "learning to code in JavaScript",
    "running a team meeting", "moving to a new country", "choosing a first car", "writing a CV",
    "decluttering a home", "practising mindfulness", "learning chess", "caring for an elderly parent",
    "growing tomatoes", "photographing landscapes", "negotiating a salary", "volunteering in the community",
    "memorising a speech", "cycling to work", "making a podcast interview sound good", "teaching kids to read",
    "getting back into running", "packing for a camping trip", "writing unit tests", "learning to knit",
)
_ADVICE_TEMPLATES_2 = (
    "How do I get started with {a}?", "Give me a one-week beginner plan for {a}.",
    "What equipment or resources do I need for {a}?", "Explain the three most important habits for {a}.",
)
_MESSAGES_2 = (
    "Write a short email to my manager asking for a day off next Friday.",
    "Write a polite complaint to a restaurant about a cold meal.",
    "Write a birthday message for my best friend.",
    "Write a short note to a neighbour about a parcel I took in for them.",
    "Write a text message inviting friends to a barbecue on Saturday.",
    "Write a short thank-you email after a job interview.",
    "Write a message congratulating a colleague on a promotion.",
    "Write a short announcement that our office will be closed on Monday.",
    "Write an email asking a teacher about my child's homework.",
    "Write a short review of a cafe with great coffee but slow service.",
    "Write a product description for a pair of noise-cancelling headphones.",
    "Write a product description for a handmade wooden chair.",
    "Write a short bio for a freelance graphic designer.",
    "Write an invitation to a small book launch.",
    "Write a short farewell message for a colleague who is retiring.",
    "Write a get-well-soon card for a friend in hospital.",
    "Write a short letter to a pen pal in another country.",
    "Write an email reminding the team about tomorrow's deadline.",
    "Write a short advert for a lost cat poster.",
    "Write a welcome speech for a school open day.",
    "Write a recipe introduction for a simple tomato soup.",
    "Write a short message asking a friend to return a borrowed book.",
    "Write a toast for my sister's wedding.",
    "Write a short motivational message for a team before a big launch.",
    "Write a short email cancelling a gym membership.",
    "Write a message to a client apologising for a late delivery.",
    "Write a short introduction of myself for a new class.",
    "Write an out-of-office reply for a two-week holiday.",
    "Write a short fundraising appeal for a local animal shelter.",
    "Write a short letter of recommendation for a hard-working student.",
)


def writing_tasks_extra() -> list[str]:
    """The second writing and advice set: new topics under every template, new activities, new messages."""
    templates = _WRITING_TEMPLATES + _WRITING_TEMPLATES_2
    advice = _ADVICE_TEMPLATES + _ADVICE_TEMPLATES_2
    return ([tmpl.format(t=t) for t in _TOPICS_2 for tmpl in templates]
            + [tmpl.format(a=a) for a in _ACTIVITIES_2 for tmpl in advice]
            + list(_MESSAGES_2))


# ---------------------------------------------------------------------------------------------- chat

# Things to ask "what is" about: everyday science, technology, society (no item of the held-out chat prompts).
_CONCEPTS = (
    "a black hole", "photosynthesis", "inflation", "a vaccine", "the stock market", "a neural network",
    "democracy", "an earthquake", "a rainbow", "gravity", "electricity", "a password manager", "a blockchain",
    "the immune system", "a hurricane", "compound interest", "the greenhouse effect", "DNA", "a metaphor", "jazz",
    "a tsunami", "a solar panel", "a credit score", "evolution", "a galaxy", "an atom", "a virus", "a bacterium",
    "the water cycle", "a mortgage", "an algorithm", "a search engine", "a database", "the cloud", "a firewall",
    "a web browser", "an operating system", "a spreadsheet", "a podcast", "a satellite", "a comet", "an eclipse",
    "a calorie", "a protein", "a carbohydrate", "metabolism", "a recession", "a budget deficit", "a tax return",
    "an election", "a parliament", "a constitution", "a jury", "a patent", "copyright", "a startup",
    "a supply chain", "a microwave oven", "a refrigerator", "a jet engine", "a nuclear reactor", "a wind turbine",
    "a battery", "a transistor", "a laser", "radar", "sonar", "a telescope", "a microscope", "an antibiotic",
    "an allergy", "a migraine", "sleep apnea", "a placebo", "a hypothesis", "a theory", "a fossil", "a glacier",
    "a desert", "a rainforest", "a coral reef", "climate change", "a carbon footprint", "a renewable resource",
    "a haiku", "a sonnet", "an opera", "a symphony", "impressionism", "a documentary", "a sitcom",
    "a chatbot", "machine learning", "virtual reality", "a smart contract", "an emoji", "a meme", "a hashtag",
    "a QR code", "two-factor authentication", "phishing", "a VPN", "an IP address", "Wi-Fi", "Bluetooth", "GPS",
)
_CONCEPT_TEMPLATES = (
    "What is {c}?", "How does {c} work?", "Can you explain {c} in simple terms?",
    "Tell me something interesting about {c}.",
)
# Pairs people mix up.
_PAIRS = (
    ("weather", "climate"), ("a virus", "a bacterium"), ("RAM", "storage"), ("a crocodile", "an alligator"),
    ("affect", "effect"), ("a debit card", "a credit card"), ("speed", "velocity"), ("a lake", "a pond"),
    ("a frog", "a toad"), ("baking soda", "baking powder"), ("a hurricane", "a tornado"), ("mass", "weight"),
    ("a simile", "a metaphor"), ("a republic", "a democracy"), ("a town", "a city"), ("a moth", "a butterfly"),
    ("an ape", "a monkey"), ("a meteor", "a meteorite"), ("a violin", "a viola"), ("a latte", "a cappuccino"),
    ("jam", "jelly"), ("a rabbit", "a hare"), ("an emigrant", "an immigrant"), ("a psychologist", "a psychiatrist"),
    ("a sweet potato", "a yam"), ("a dolphin", "a porpoise"), ("a turtle", "a tortoise"), ("hardware", "software"),
    ("a laptop", "a tablet"), ("a planet", "a star"), ("an ocean", "a sea"), ("a poem", "a song"),
    ("a loan", "a grant"), ("savings", "investments"), ("a cold", "the flu"), ("empathy", "sympathy"),
    ("a university", "a college"), ("a novel", "a novella"),
    ("HTTP", "HTTPS"), ("a compiler", "an interpreter"), ("Python", "JavaScript"), ("a CPU", "a GPU"),
)
_HOWTO = (
    "boil an egg", "change a flat tyre", "tie a tie", "make a cup of tea", "start a conversation with a stranger",
    "remove a coffee stain", "fall asleep faster", "stop procrastinating", "write a thank-you note",
    "cook rice without a rice cooker", "unclog a sink", "save for a holiday", "learn to juggle",
    "take a good photo with my phone", "iron a shirt", "plant a tree", "clean my keyboard", "back up my phone",
    "choose a good password", "prepare for a long flight", "make new friends as an adult", "calm down before an exam",
    "fix a squeaky door", "keep my plants alive while on holiday", "read faster", "remember people's names",
    "make pancakes", "say no politely", "organise my email inbox", "get better at drawing", "stop biting my nails",
    "speed up my computer", "pack a suitcase efficiently", "apologise to a friend", "start running",
    "make a good first impression", "learn to whistle", "sharpen a kitchen knife", "wash a wool jumper",
    "build a campfire safely", "practise a new language every day", "write a short story", "stay warm in winter",
    "keep a conversation going", "make cold brew coffee", "choose a good book to read", "set up a home office",
)
_SITUATIONS = (
    "I can't sleep", "my phone gets wet", "I get lost in a new city", "a friend is upset with me",
    "I forget my password", "I feel bored", "my code has a bug I can't find", "I am nervous about a presentation",
    "my bike gets a puncture", "I burn my finger while cooking", "I see a spider in my room",
    "my laptop will not turn on", "I miss my train", "I lock myself out of my house", "my cat stops eating",
    "I feel lonely", "I spill water on my keyboard", "I have too much homework", "it starts raining on a hike",
    "I cannot decide what to cook for dinner", "my neighbours are too loud", "I get a parking ticket",
    "I make a mistake at work", "I lose my wallet", "my plants have yellow leaves",
)
_FAVOURITES = (
    "colour", "book", "film", "food", "animal", "season", "song", "sport", "programming language", "city",
    "word", "number", "planet", "game", "holiday", "fruit", "board game", "invention", "dessert", "flower",
)
_BOT_REMARKS = (
    "Are you a robot?", "Are you alive?", "Can you feel emotions?", "Do you dream?", "Do you have a name?",
    "How old are you?", "Where do you live?", "Do you ever get tired?", "Can you learn from me?",
    "Are you smarter than a human?", "Do you have friends?", "What do you do for fun?", "Can you tell jokes?",
    "Tell me a joke.", "Tell me a joke about computers.", "Tell me a joke about cats.", "Tell me a riddle.",
    "You are funny.", "You are very helpful.", "You are boring.", "You are wrong.", "You make me laugh.",
    "I am bored. Entertain me.", "I am sad today.", "I had a great day!", "I just finished my exams.",
    "Good morning! How are you?", "Good night!", "Thank you for your help.", "What can you do?",
    "Can you keep a secret?", "Do you like people?", "What languages do you speak?", "Can you sing?",
    "Do you eat?", "Do you sleep?", "Who made you?", "Are you happy?", "What are you thinking about?",
    "Can you help me with my homework?", "I think you are clever.", "Let's play a word game.",
    "What is the meaning of life?", "Do you believe in ghosts?", "What makes you different from a search engine?",
    "Can you remember our last conversation?", "I don't understand you.", "Say something nice.",
    "What should I do this weekend?", "Give me a fun fact.", "What is your opinion on pineapple on pizza?",
    "Do you think robots will replace teachers?", "Is it going to rain tomorrow?", "What time is it?",
    "Can you recommend a good film for tonight?", "Can you recommend a book for a long train ride?",
    "What is a good name for a goldfish?", "Tell me a bedtime story.", "Write me a short poem.",
)
# Short trivia, each answerable in a sentence (none about the held-out trivia prompts' subjects).
_BOOKS = (
    "Pride and Prejudice", "Moby-Dick", "War and Peace", "Don Quixote", "Frankenstein", "Dracula",
    "Jane Eyre", "Great Expectations", "The Odyssey", "Hamlet", "Romeo and Juliet", "Les Misérables",
    "The Little Prince", "Alice's Adventures in Wonderland", "Treasure Island", "The Time Machine",
    "Nineteen Eighty-Four", "Brave New World", "To Kill a Mockingbird", "The Great Gatsby", "Crime and Punishment",
    "Wuthering Heights", "Oliver Twist", "The Jungle Book", "Gulliver's Travels", "Robinson Crusoe",
    "Anna Karenina", "The Divine Comedy", "Macbeth", "A Christmas Carol",
)
_COUNTRIES = (
    "France", "Japan", "Canada", "Brazil", "Kenya", "Australia", "Egypt", "Norway", "Argentina", "India",
    "Mexico", "Italy", "Spain", "Germany", "Peru", "Vietnam", "Turkey", "Ireland", "Chile", "Portugal",
    "Greece", "Sweden", "Finland", "Poland", "Morocco", "Nigeria", "Thailand", "Indonesia", "New Zealand",
    "South Korea", "Colombia", "Ghana", "Hungary", "Austria", "Iceland", "Cuba", "Nepal", "Ethiopia",
)
_COUNTRY_TEMPLATES = (
    "What is the capital of {x}?", "What language is spoken in {x}?", "What is {x} famous for?",
    "What currency is used in {x}?",
)
_INVENTIONS = (
    "the telephone", "the light bulb", "the printing press", "the World Wide Web", "the aeroplane",
    "penicillin", "the steam engine", "the radio", "the television", "the bicycle", "the microscope",
    "the camera", "the compass", "paper", "the wheel", "the computer mouse", "the vaccine against smallpox",
    "the periodic table", "the theory of relativity", "the telescope",
)


def chat_questions() -> list[str]:
    """Short chat turns: everyday questions, how-tos, remarks to the bot, one-sentence trivia."""
    out = [tmpl.format(c=c) for c in _CONCEPTS for tmpl in _CONCEPT_TEMPLATES]
    out += [f"What is the difference between {a} and {b}?" for a, b in _PAIRS]
    out += [f"How do I {h}?" for h in _HOWTO] + [f"What is the best way to {h}?" for h in _HOWTO]
    out += [f"What should I do if {s}?" for s in _SITUATIONS]
    out += [f"What is your favourite {f}?" for f in _FAVOURITES] + [f"Do you have a favourite {f}?" for f in _FAVOURITES]
    out += list(_BOT_REMARKS)
    out += [f"Who wrote {b}?" for b in _BOOKS] + [f"What is {b} about?" for b in _BOOKS]
    out += [tmpl.format(x=x) for x in _COUNTRIES for tmpl in _COUNTRY_TEMPLATES]
    out += [f"Who invented {i}?" for i in _INVENTIONS] + [f"Why was {i} important?" for i in _INVENTIONS]
    return out
