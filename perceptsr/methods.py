"""The method packages and the objective types each provides.

The loop knows objectives only by name. A method package registers its objective classes and
their config schemas itself when imported; this table says which package to import for a name,
so a config can name ``ea_adam`` without anything being imported before it is used.
"""

METHOD_PACKAGES: dict[str, str] = {
    "ranksrgan": "perceptsr.ranksrgan",
    "ranker": "perceptsr.ranksrgan",
    "ea_adam": "perceptsr.ea_adam",
    "fusion": "perceptsr.fusion",
}
