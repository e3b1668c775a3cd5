"""The `riskgate` command line: serve, rules, lists, decisions, audit, screen, synth."""
