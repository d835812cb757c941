"""The offline tools: `powmon report` and `powmon plot`, reading the stored data files."""
