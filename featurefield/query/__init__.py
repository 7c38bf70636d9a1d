"""Queries on a trained field: text (:mod:`.text`), SAM prompts (:mod:`.prompts`), 3D selection
(:mod:`.selection`) and correspondences (:mod:`.correspondence`)."""
