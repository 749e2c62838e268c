"""Observation: read-only facts about machines and the cluster, through one transport
(a script over the cluster's SSH configuration) and pure parsers. Nothing here changes
a node."""
