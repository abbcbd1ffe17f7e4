//! `POST /v1/training/jobs` bodies: the spec parsed and resolved against a small dataset, as
//! `JobManager::submit` does (a refusal there is a 400), then what the job runner does with an
//! accepted spec before the first epoch: the stored spec read back, the data prepared, the
//! network built on the prepared width.
#![no_main]

use std::sync::OnceLock;

use kiln::dataset::{read_table, Table};
use kiln::model::Model;
use kiln::training::spec::{JobSpec, ResolvedSpec};
use kiln::training::{run, trainer};
use libfuzzer_sys::fuzz_target;

/// Every column type: float, integer (few values), category, boolean, a class target and a
/// numeric one, with a missing cell.
const DATA: &str = "x,n,color,flag,species,y
5.1,1,red,true,setosa,0.5
4.9,2,green,false,versicolor,1.5
6.3,1,blue,true,virginica,2.25
5.8,3,red,false,setosa,
7.1,2,,true,versicolor,3.0
6.0,3,green,false,virginica,1.0
";

fn tables() -> &'static (Table, Table) {
    static TABLES: OnceLock<(Table, Table)> = OnceLock::new();
    TABLES.get_or_init(|| {
        let path = kiln_fuzz::scratch_file("job.csv");
        std::fs::write(&path, DATA).expect("writing the fixture dataset");
        let table = read_table(&path, None, None).expect("the fixture dataset reads");
        let validation = read_table(&path, None, None).expect("the fixture dataset reads");
        (table, validation)
    })
}

fuzz_target!(|body: &[u8]| {
    // A spec that does not parse is a 400 (`JobError::InvalidSpec`), as is one refused below.
    let Ok(spec) = JobSpec::from_json(body) else {
        return;
    };
    let (table, validation) = tables();
    if spec.validation_dataset.is_some()
        && spec.check_validation_columns(table, validation).is_err()
    {
        return;
    }
    let Ok(resolved) = spec.resolve(table) else {
        return;
    };
    // Stored as JSON in the job database, read back by the job runner.
    let stored = serde_json::to_value(&resolved).expect("specs serialize");
    let resolved: ResolvedSpec = serde_json::from_value(stored).expect("a stored spec reads back");
    let valid = resolved
        .spec
        .validation_dataset
        .as_ref()
        .map(|_| validation);
    // From here a failure fails the job (it is not the request's answer); it must not panic.
    let Ok(data) = run::prepare_data(table, &resolved, valid) else {
        return;
    };
    let model_spec = trainer::model_spec_for(&resolved, &data);
    let vm = candle_nn::VarMap::new();
    let vb =
        candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &candle_core::Device::Cpu);
    let _ = Model::check_and_build(&model_spec, &vb);
});
