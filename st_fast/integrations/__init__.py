"""Integrations with other training frameworks; each is optional and imports its framework lazily.

    from st_fast.integrations.lightning import STCallback, ACMCallback   # pip install "st_fast[lightning]"
"""
