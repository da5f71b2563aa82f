"""Kafka plumbing: topic names, codecs, the config view, and the Faust app factory.

``streams.topics``, ``streams.kafka`` and ``streams.config_view`` are plain aiokafka and are
shared by the api role; only ``streams.app`` imports Faust.
"""
