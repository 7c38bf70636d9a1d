"""Teachers: frozen 2D foundation models (SAM, CLIP, DINO) behind one interface, and the feature cache."""

from featurefield.teachers.base import Teacher, available_teachers, create_teacher, register_teacher

__all__ = ["Teacher", "available_teachers", "create_teacher", "register_teacher"]
