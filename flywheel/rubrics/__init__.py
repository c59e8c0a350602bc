"""Example rubrics (Markdown with front matter: name, score_range) for the LLM judge."""
