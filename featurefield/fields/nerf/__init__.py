"""The NeRF feature field (F3RM): Nerfacto radiance field + a separate hash-grid feature field."""
