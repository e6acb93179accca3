"""The analysis of finished runs: comparison tables (`compare`), paired statistics (`stats`) and the paper's
figures (`report`). Reads run folders only; never trains."""
