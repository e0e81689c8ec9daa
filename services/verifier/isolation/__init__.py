"""Isolation backends for submitted code: one module per backend, ``base.Isolation`` the seam."""
