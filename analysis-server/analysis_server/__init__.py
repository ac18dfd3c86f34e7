"""YouSync's analysis server: fetches an uploaded clip from S3, decodes it and measures it.

The worker only knows its URL (ANALYSIS_SERVER_URL); see `app` for the HTTP contract.
"""
