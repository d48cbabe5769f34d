"""The 32 classes of the embedded emoji model, in id order (ids 0..31; id 32 is the null class for guidance)."""

EMOJI_CLASSES: list[tuple[str, str]] = [
    ("cat", "🐱"),
    ("dog", "🐶"),
    ("fox", "🦊"),
    ("frog", "🐸"),
    ("panda", "🐼"),
    ("lion", "🦁"),
    ("octopus", "🐙"),
    ("unicorn", "🦄"),
    ("pizza", "🍕"),
    ("hamburger", "🍔"),
    ("doughnut", "🍩"),
    ("strawberry", "🍓"),
    ("watermelon", "🍉"),
    ("cactus", "🌵"),
    ("sunflower", "🌻"),
    ("mushroom", "🍄"),
    ("rocket", "🚀"),
    ("car", "🚗"),
    ("soccer ball", "⚽"),
    ("balloon", "🎈"),
    ("fire", "🔥"),
    ("star", "⭐"),
    ("rainbow", "🌈"),
    ("heart", "❤"),
    ("gem", "💎"),
    ("jack-o-lantern", "🎃"),
    ("ghost", "👻"),
    ("robot", "🤖"),
    ("grinning face", "😀"),
    ("sunglasses face", "😎"),
    ("avocado", "🥑"),
    ("honeybee", "🐝"),
]

LABELS: list[str] = [name for name, _ in EMOJI_CLASSES]
NUM_CLASSES = len(EMOJI_CLASSES)
