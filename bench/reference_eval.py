# PAI's offline evaluation script, verbatim from reference/pai-llm-intent-recognition.txt
# ("Evaluate a model offline"), as the baseline of bench/eval_bench.py. Adapted: only the device
# ("cuda" -> "cpu") and the two paths (model directory and test file, from the command line).
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer
import json
from tqdm import tqdm
device = "cpu"
model_name = sys.argv[1]
print(model_name)
model = AutoModelForCausalLM.from_pretrained(
model_name,
torch_dtype="auto",
device_map="auto"
)
tokenizer = AutoTokenizer.from_pretrained(model_name)
count = 0
ecount = 0
test_data = json.load(open(sys.argv[2]))
system_prompt = 'You are an intent recognition expert. You can recognize an intent based on user questions and return the corresponding intent and parameters. '
for i in tqdm(test_data[:]):
    prompt = '<|im_start|>system\n' + system_prompt + '<|im_end|>\n<|im_start|>user\n' + i['instruction'] + '<|im_end|>\n<|im_start|>assistant\n'
    gold = i['output']
    gold = gold.split(';')[0] if ';' in gold else gold
    model_inputs = tokenizer([prompt], return_tensors="pt").to(device)
    generated_ids = model.generate(
    model_inputs.input_ids,
    max_new_tokens=64,
    pad_token_id=tokenizer.eos_token_id,
    eos_token_id=tokenizer.eos_token_id,
    do_sample=False
    )
    generated_ids = [
    output_ids[len(input_ids):] for input_ids, output_ids in zip(model_inputs.input_ids, generated_ids)
    ]
    pred = tokenizer.batch_decode(generated_ids, skip_special_tokens=True)[0]
    if gold.split('(')[0] == pred.split('(')[0]:
        count += 1
        gold_list = set(gold.strip()[:-1].split('(')[1].split(','))
        pred_list = set(pred.strip()[:-1].split('(')[1].split(','))
        if gold_list == pred_list:
            ecount += 1
        else:
            pass
print("Intent recognition accuracy:", count/len(test_data))
print("Parameter recognition accuracy:", ecount/len(test_data))
