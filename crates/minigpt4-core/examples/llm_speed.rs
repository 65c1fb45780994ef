use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let dev = candle_core::Device::Cpu;
    let (llm, ct) = minigpt4_core::llama::Llama::load_gguf(std::path::Path::new(&path), &dev).unwrap();
    let tok = minigpt4_core::tokenizer::Tokenizer::from_gguf(&ct).unwrap();
    let ids: Vec<u32> = (0..64).map(|i| 100 + i).collect();
    for _ in 0..2 {
        let mut cache = llm.new_cache();
        let t = Instant::now();
        let mut logits = llm.forward_last(&llm.embed(&ids).unwrap(), &mut cache).unwrap();
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..64 {
            let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            logits = llm.forward_last(&llm.embed(&[next]).unwrap(), &mut cache).unwrap();
        }
        let dec = t.elapsed().as_secs_f64();
        println!("prefill {:.1} tok/s, decode {:.1} tok/s", 64.0 / prefill, 64.0 / dec);
    }
    let _ = tok;
}
