"""Tests for the o1pool distribution; a package so test modules import shared helpers as tests.*."""
