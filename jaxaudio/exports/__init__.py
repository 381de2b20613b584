"""Writers of a trained run as artefacts that run without the training code."""
