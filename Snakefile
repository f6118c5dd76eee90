# The workflow lives in workflow/Snakefile (Snakemake workflow-catalog layout); see config/README.md.
include: "workflow/Snakefile"


# An included file's default target does not carry over to the including file: name it here.
rule default:
    input:
        rules.all.input,
    default_target: True
