import torch

from compresstune.measure.memory import SavedActivations, training_memory


def test_saved_activations_counts_unique_storages():
    lin = torch.nn.Linear(100, 100)
    x = torch.randn(8, 100, requires_grad=True)
    with SavedActivations() as sa:
        y = torch.relu(lin(x))  # saves x (for the weight grad) and relu's output
        y.sum().backward()
    assert sa.bytes >= 2 * 8 * 100 * 4


def test_training_memory_full_vs_frozen(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    batch = (
        {"input_ids": torch.randint(1000, 2000, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)},
        torch.tensor([0, 1, 0, 1]),
    )
    full = training_memory(m, [batch], list(m.parameters()), bf16=False)
    assert full["grads_mb"] == full["params_mb"] and abs(full["optimizer_state_mb"] - 2 * full["params_mb"]) <= 0.2
    heads = [m.classifier.weight, m.classifier.bias]
    for p in m.parameters():
        p.requires_grad_(False)
    for p in heads:
        p.requires_grad_(True)
    frozen = training_memory(m, [batch], heads, bf16=False)
    assert frozen["grads_mb"] < 0.01 and frozen["peak_tensor_mb"] < full["peak_tensor_mb"] - 2 * full["params_mb"]
