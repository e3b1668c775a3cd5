"""Synthetic traffic: a population, its rhythm and fraud patterns, as ScreenRequests."""
