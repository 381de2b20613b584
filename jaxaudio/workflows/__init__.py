"""Work made of runs: fine-tuning one, cross-validating a recipe, choosing a pretrained model."""
