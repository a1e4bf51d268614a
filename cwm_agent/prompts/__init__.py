"""CWM model I/O: the prompt texts (`templates`), the chat format (`render`), reply parsing (`parse`)."""
