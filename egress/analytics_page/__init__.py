"""The /analytics page's own files (index.html, analytics.js, analytics.css), served as they are by
``egress.wado.analytics``: plain files, no build step."""
