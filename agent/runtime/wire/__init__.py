"""The wire forms of inference events the agent reads (docs/design.md §4), one module each.

- `v1`: the agent's own `dknn.inference.v1` event (one input, base64 or nested values);
- `oip_v2`: Open Inference Protocol v2 requests and responses (KServe, Triton, MLServer, Seldon);
- `kserve_v1`: KServe's v1 protocol bodies, `{"instances": [...]}` and `{"predictions": [...]}`;
- `cloudevents`: CloudEvents in Kafka's binary content mode (`ce_*` headers), as KServe's payload
  logger lands in Kafka through Knative Eventing; the body is one of the forms above.

`agent.runtime.events.decode_record` recognises the form of each record from its headers and body,
so one topic may carry several. `tensors` holds what they share: turning JSON numbers into the
bundle's arrays with the same checks, whatever the form.
"""
