"""The message contract both Flower apps import: message types, record keys, and one small
dataclass per message with ``to_record`` / ``from_record``. Neither app imports the other."""
