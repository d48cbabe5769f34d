"""`embedded/`: the project's own small models, trained here and shipped in `assets/`, so that everything runs offline
on a CPU: `emoji/` is the class-conditional emoji DiT (pipeline, classes, renderer, classifier, training, card)."""
