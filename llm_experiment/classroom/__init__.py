"""The classroom gateway (issue #12): one Ollama server, or several, shared by a whole class.

Students reach Ollama through a gateway that knows who they are (:mod:`.roster`), decides what each
request may do before it reaches Ollama (:mod:`.policy`) and logs what it cost (:mod:`.usage`). Those
modules are pure logic over SQLite and dicts, with no networking, so they are tested without a server.
"""
