"""End-to-end encrypted chat: the envelope, its store and service, the ``/chat``
namespace and the MQTT transport."""
