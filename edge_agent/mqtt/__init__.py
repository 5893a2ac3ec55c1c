"""MQTT side of the edge agent: typed config, topics, payloads, transport, publisher, Home Assistant discovery.

Import `AgentPublisher` from `edge_agent.mqtt.publisher` and `MqttConfig` from `edge_agent.mqtt.config`; the
durable outbox is `edge_agent.outbox.Outbox`. Topic and payload reference: docs/mqtt.md.
"""
