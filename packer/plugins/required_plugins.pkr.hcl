# Plugin pins for Packer >= 1.7, where builders and provisioners are plugins installed by
# `packer init`. Packer 1.6 bundles them and rejects this block, so goldsmith copies
# this file beside the templates only when `packer version` is 1.7 or newer.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "= 1.3.3"
    }
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = "= 1.1.0"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = "= 1.1.1"
    }
  }
}
