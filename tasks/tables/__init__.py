"""Drivers that reproduce the paper's tables (``make reproduce-tableN``), one module per table."""
