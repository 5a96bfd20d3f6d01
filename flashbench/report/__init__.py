"""Output: tables for people fitted to the terminal, csv/json/markdown for machines, gate reports
(markdown, JUnit) and figures."""
