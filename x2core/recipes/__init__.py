"""Recipes read top to bottom: the synthetic demo, the multilingual (XLM-R swap) demo and
their figures."""
