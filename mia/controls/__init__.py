"""Controls: checks that an evaluation measures membership and not something else (docs/method.md, "controls").

``blind``: whether the two sets differ without the model; ``reference``: the same attack on a model that did
not train on the samples.
"""
