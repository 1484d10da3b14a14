"""Small helpers shared by the operations (wfl's ``wfl.utils`` import paths)."""
