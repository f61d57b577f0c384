"""Reporting: aggregation, paper tables and figures, statistics and Pareto fronts."""
