"""Teachers: frozen 2D foundation models (SAM, CLIP, DINO) behind one interface, and the feature cache."""

from featurefield.teachers.base import (
    Teacher,
    available_teachers,
    create_teacher,
    describe,
    register_teacher,
    registered,
    takes_weights_folder,
    teacher_class,
)
from featurefield.teachers.spec import TeacherSpec, parse_options

#: the teacher a command distills when none is named
DEFAULT_TEACHER = "sam"

__all__ = ["DEFAULT_TEACHER", "Teacher", "TeacherSpec", "available_teachers", "create_teacher", "describe",
           "parse_options", "register_teacher", "registered", "takes_weights_folder", "teacher_class"]
