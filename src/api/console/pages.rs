//! The console's pages: the layout and each page's skeleton — headings, forms, empty tables
//! and chart areas with ids. They hold no data: `console.js` fills them from the API.

use maud::{html, Markup, DOCTYPE};

use super::assets::url;
use super::Page;

pub(super) fn render(page: Page, id: Option<&str>) -> String {
    let (title, name, body) = match page {
        Page::Models => ("Models", "models", models()),
        Page::Model => ("Model", "model", model(id.unwrap_or_default())),
        Page::Datasets => ("Datasets", "datasets", datasets()),
        Page::Dataset => ("Dataset", "dataset", dataset(id.unwrap_or_default())),
        Page::Training => ("Training", "training", training()),
        Page::Job => ("Training job", "job", job(id.unwrap_or_default())),
        Page::Evaluate => ("Evaluate", "evaluate", evaluate()),
    };
    let section = match page {
        Page::Models | Page::Model => "models",
        Page::Datasets | Page::Dataset => "datasets",
        Page::Training | Page::Job => "training",
        Page::Evaluate => "evaluate",
    };
    layout(title, name, section, id, body).into_string()
}

fn layout(title: &str, page: &str, section: &str, id: Option<&str>, body: Markup) -> Markup {
    let nav = [
        ("models", "/console/models", "Models"),
        ("datasets", "/console/datasets", "Datasets"),
        ("training", "/console/training", "Training"),
        ("evaluate", "/console/evaluate", "Evaluate"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · kiln" }
                link rel="stylesheet" href=(url("uPlot.min.css"));
                link rel="stylesheet" href=(url("console.css"));
                script defer src=(url("uPlot.iife.min.js")) {}
                script defer src=(url("charts.js")) {}
                script defer src=(url("console.js")) {}
            }
            body data-page=(page) data-id=[id] {
                header.top {
                    a.brand href="/console" { "kiln" }
                    nav {
                        @for (key, href, label) in nav {
                            a href=(href) aria-current=[(key == section).then_some("page")] { (label) }
                        }
                    }
                    span #key-state.key-state {}
                    button #key-button type="button" { "API key" }
                }
                div #banner.banner hidden {}
                main { (body) }
                dialog #key-dialog {
                    form #key-form method="dialog" {
                        h2 { "API key" }
                        p #key-reason { "This server needs an API key." }
                        label { "Key " input #key-input type="password" autocomplete="off" required; }
                        p.hint { "Kept in this tab only (sessionStorage), sent as a bearer token." }
                        div.actions {
                            button #key-forget type="button" { "Forget key" }
                            button #key-cancel type="button" { "Cancel" }
                            button type="submit" { "Use key" }
                        }
                    }
                }
            }
        }
    }
}

fn models() -> Markup {
    html! {
        h1 { "Models" }
        p.hint { "Every model and version the server holds, with live request and batch statistics." }
        table #models-table.data {
            thead { tr {
                th { "Model" } th { "Version" } th { "State" } th.num { "Requests" } th.num { "Batches" }
                th.num { "Rows" } th.num { "Mean batch" } th.num { "Max batch" } th.num { "Queue" }
                th.num { "Rejected" }
            } }
            tbody {}
        }
        p #models-empty.hint hidden { "No models yet: train one from a dataset." }
    }
}

fn model(name: &str) -> Markup {
    html! {
        h1 { "Model " span #model-name { (name) } }
        section {
            h2 { "Versions" }
            table #versions-table.data {
                thead { tr {
                    th { "Version" } th { "State" } th.num { "Requests" } th.num { "Batches" }
                    th.num { "Rows" } th.num { "Mean batch" } th.num { "Queue" } th.num { "Rejected" }
                } }
                tbody {}
            }
            label { "Version " select #version {} }
        }
        div.columns {
            section {
                h2 { "Signature" }
                dl #signature.facts {}
            }
            section {
                h2 { "Training" }
                dl #training-info.facts {}
                div #training-confusion {}
            }
        }
        section {
            h2 { "Predict" }
            form #predict-form.form {
                div #predict-fields.fields {}
                button type="submit" { "Predict and explain" }
            }
            div #predict-result.result {}
            h3 { "Explanation" }
            p.hint { "Integrated Gradients: how much each input column moved the output from the baseline's." }
            div #explain-chart.bars {}
            p #explain-facts.hint {}
        }
    }
}

fn datasets() -> Markup {
    html! {
        h1 { "Datasets" }
        section {
            h2 { "Upload" }
            form #upload-form.form {
                label #drop.drop {
                    span { "Drop a CSV or JSON file here, or click to choose one" }
                    input #upload-file type="file" accept=".csv,.tsv,.txt,.json,text/csv,application/json";
                }
                label { "Name " input #upload-name type="text" placeholder="optional"; }
            }
            p #upload-status.status {}
        }
        section {
            h2 { "Uploaded" }
            table #datasets-table.data {
                thead { tr {
                    th { "Dataset" } th { "Name" } th.num { "Rows" } th.num { "Columns" }
                    th.num { "Duplicates" } th { "Uploaded" }
                } }
                tbody {}
            }
        }
    }
}

fn dataset(id: &str) -> Markup {
    html! {
        h1 { "Dataset " span #dataset-id { (id) } }
        dl #dataset-summary.facts {}
        p { a #train-link.button href={ "/console/training?dataset=" (id) } { "Train a model on it" } }
        h2 { "Profile" }
        table #profile-table.data {
            thead { tr {
                th { "Column" } th { "Type" } th.num { "Missing" } th.num { "Invalid" }
                th.num { "Min" } th.num { "Max" } th.num { "Mean" } th.num { "Std" } th { "Categories" }
            } }
            tbody {}
        }
    }
}

fn training() -> Markup {
    html! {
        h1 { "Training" }
        section {
            h2 { "Start a job" }
            form #train-form.form {
                div.fields {
                    label { "Dataset " select #train-dataset required {} }
                    label { "Target column " select #train-target required {} }
                    label { "Model name " input #train-model type="text" required pattern="[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}"; }
                }
                details {
                    summary { "Optional settings (empty: kiln's defaults)" }
                    div.fields {
                        label { "Task " select #train-task {
                            option value="" { "from the target" }
                            option value="classification" { "classification" }
                            option value="regression" { "regression" }
                        } }
                        label { "Epochs " input #train-epochs type="number" min="1" step="1"; }
                        label { "Batch size " input #train-batch type="number" min="1" step="1"; }
                        label { "Learning rate " input #train-lr type="number" min="0" step="any"; }
                        label { "Validation split " input #train-split type="number" min="0" max="0.9" step="any"; }
                        label { "Seed " input #train-seed type="number" min="0" step="1"; }
                    }
                    label.wide { "More of the spec (JSON, merged in; e.g. {\"layers\": [...]})"
                        textarea #train-extra rows="3" {} }
                }
                button type="submit" { "Start training" }
            }
            p #train-status.status {}
        }
        section {
            h2 { "Jobs" }
            table #jobs-table.data {
                thead { tr {
                    th { "Job" } th { "Model" } th { "State" } th { "Progress" } th { "Version" } th { "Created" }
                } }
                tbody {}
            }
        }
    }
}

fn job(id: &str) -> Markup {
    html! {
        h1 { "Job " span #job-id { (id) } " " span #job-state.state {} }
        p { button #job-cancel type="button" hidden { "Cancel" } }
        dl #job-summary.facts {}
        div.columns {
            section {
                h2 { "Loss" }
                div #loss-chart.chart {}
            }
            section {
                h2 { "Metric" }
                div #metric-chart.chart {}
            }
        }
        p #job-progress.hint {}
        div.columns {
            section {
                h2 { "Final metrics" }
                dl #job-metrics.facts {}
                div #job-confusion {}
            }
            section {
                h2 { "Cleaning report" }
                dl #job-report.facts {}
                table #job-columns.data {
                    thead { tr {
                        th { "Column" } th { "Kind" } th.num { "Missing" } th.num { "Invalid" } th.num { "Filled" }
                        th.num { "Clipped" } th.num { "Dropped" }
                    } }
                    tbody {}
                }
            }
        }
    }
}

fn evaluate() -> Markup {
    html! {
        h1 { "Evaluate" }
        p.hint { "A version's loss and metrics on an uploaded dataset that holds the target column." }
        form #eval-form.form {
            div.fields {
                label { "Model " select #eval-model required {} }
                label { "Version " select #eval-version {} }
                label { "Dataset " select #eval-dataset required {} }
                label { "Target column " input #eval-target type="text" placeholder="the one it was trained on"; }
            }
            button type="submit" { "Evaluate" }
        }
        p #eval-status.status {}
        div.columns {
            section {
                dl #eval-metrics.facts {}
                table #eval-classes.data hidden {
                    thead { tr { th { "Label" } th.num { "Precision" } th.num { "Recall" } th.num { "F1" } th.num { "Support" } } }
                    tbody {}
                }
            }
            section {
                div #eval-confusion {}
                div #eval-residuals.chart {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_name_only_their_own_assets_and_escape_the_id() {
        let page = render(Page::Model, Some("a<b"));
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("a&lt;b"), "{page}");
        assert!(!page.contains("a<b"));
        assert!(!page.contains("style="), "no inline styles");
        assert!(!page.contains("<script>"), "no inline scripts");
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
