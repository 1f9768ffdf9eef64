from nudiff.runtime import start_job

start_job(snakemake.log[0])

from nudiff.evaluation_figures import plot_table_bars
from nudiff.table import make_table

out = snakemake.output
table = make_table(list(snakemake.input), snakemake.params.paper_tables, out.table, out.markdown, out.html)
plot_table_bars(table, out.bars)
